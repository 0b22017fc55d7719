"""The preparation passes together: public API, real models end to end, a >2 GB model."""
import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fp8onnx.passes as passes
from _prep_util import check, run
from fp8onnx import modelio
from fp8onnx.passinfra import PassManager

PREP = ["LiftConstants", "UpgradeOpset", "InferShapes", "FoldConstants", "NameNodes", "TopologicalSort"]


def _pipeline():
    return PassManager([passes.LiftConstants(), passes.UpgradeOpset(19), passes.FoldConstants(),
                        passes.InferShapes(), passes.NameNodes(), passes.TopologicalSort()])


def test_public_api():
    assert set(PREP) <= set(passes.__all__)
    for name in PREP:
        cls = getattr(passes, name)
        assert cls.__module__.startswith("fp8onnx.passes.")
        assert cls.__doc__ and len(cls.__doc__.strip()) > 10
        module = __import__(cls.__module__, fromlist=["__doc__"])
        assert "Example" in module.__doc__ and "Requires" in module.__doc__, cls.__module__


@pytest.mark.parametrize("entry", ["ppocr_det", "ppocr_rec", "ppocr_cls"])
def test_real_models_end_to_end(zoo_entry, entry, tmp_path):
    e = zoo_entry(entry)
    m = e.load()
    original = e.load()
    assert _pipeline()(m).modified
    assert _pipeline()(m).modified is False  # the pipeline is a fixed point after one run
    check(m)
    names = [n.name for n in m.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert not [n for n in m.graph.node if n.op_type == "Constant"]
    path = tmp_path / "prepared.onnx"
    modelio.save_model(m, path)
    loaded = modelio.load_model(path)
    for feeds in e.calib_feeds(2):
        for a, b in zip(run(original, feeds), run(loaded, feeds)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_weightless_copy_and_back(zoo_entry):
    from fp8onnx import graph as G

    m = zoo_entry("ppocr_rec").load()
    passes.LiftConstants()(m)
    before = m.SerializeToString()
    light = G.weightless_copy(m)
    assert m.SerializeToString() == before
    big = {t.name for t in m.graph.initializer if G.tensor_nbytes(t) >= 1 << 20}
    assert big and {t.name for t in light.graph.initializer if t.data_location == TensorProto.EXTERNAL} == big
    assert light.ByteSize() <= m.ByteSize() - sum(G.tensor_nbytes(t) for t in m.graph.initializer if t.name in big) + 100 * len(big)
    # Adopting the unchanged copy gives back the same model, weights included.
    G.adopt_structure(m, light)
    assert m.SerializeToString() == before
    # A changed structure is adopted; stubs keep the model's data.
    light.graph.node[0].name = "renamed"
    light.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.arange(3, dtype=np.int64), "new_axes"))
    G.adopt_structure(m, light)
    assert m.graph.node[0].name == "renamed" and m.graph.initializer[-1].name == "new_axes"
    assert all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)
    restored = {t.name: t.raw_data for t in m.graph.initializer}
    original = onnx.ModelProto.FromString(before)
    assert all(restored[t.name] == t.raw_data for t in original.graph.initializer)


def _digest(model):
    return {t.name: hashlib.sha1(t.raw_data).hexdigest() for t in model.graph.initializer}


@pytest.mark.slow
def test_model_over_2gb(tmp_path):
    # Three 740 MB weights: over protobuf's 2 GiB limit, so nothing may serialise it whole.
    n = 185_000_000
    nodes, prev = [], "x"
    for i in range(3):
        nodes.append(helper.make_node("Add", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("ReduceSum", [prev], ["y"], keepdims=0))
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    for i in range(3):  # straight into the model: make_graph would copy 2.2 GB again
        t = m.graph.initializer.add(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n])
        t.raw_data = np.full(n, i + 1, np.float32).tobytes()
    assert modelio.tensor_bytes(m) > 2**31
    digest = _digest(m)
    with pytest.raises(Exception, match="2GiB|too large|exceeds|Failed to serialize"):
        m.SerializeToString()  # what the passes must avoid
    assert passes.UpgradeOpset(19)(m).modified
    assert {o.domain: o.version for o in m.opset_import}[""] == 19
    del m.graph.value_info[:]  # the converter infers shapes itself: start from none
    assert passes.InferShapes()(m).modified
    assert [tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in m.graph.value_info] == [(n,)] * 3
    assert passes.FoldConstants()(m).modified is False
    assert _digest(m) == digest
    path = str(tmp_path / "big.onnx")
    modelio.save_model(m, path)  # automatic: external data
    assert os.path.getsize(path) < 10_000 and os.path.getsize(path + ".data") >= 3 * 4 * n
    del m
    loaded = modelio.load_model(path)
    assert _digest(loaded) == digest


def test_scan_body_is_prepared():
    # Scan body: acc += x_t @ Transpose(Constant W); every pass recurses into it.
    from _prep_util import make_model, vi

    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
         helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x_t", "Wt"], ["p"]),
         helper.make_node("Add", ["acc_in", "p"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["y_t"])],
        "body", [vi("acc_in", [2]), vi("x_t", [2])], [vi("acc_out", [2]), vi("y_t", [2])],
    )
    m = make_model([helper.make_node("Scan", ["acc0", "xs"], ["acc", "ys"], body=body, num_scan_inputs=1)],
                   [vi("acc0", [2]), vi("xs", [3, 2])], [vi("acc", [2]), vi("ys", [3, 2])], opset=19)
    feeds = {"acc0": np.zeros(2, np.float32), "xs": np.arange(6, dtype=np.float32).reshape(3, 2)}
    expected = run(m, feeds)
    assert _pipeline()(m).modified
    assert _pipeline()(m).modified is False
    check(m)
    body = m.graph.node[0].attribute[0].g
    assert [n.op_type for n in body.node] == ["MatMul", "Add", "Identity"]
    assert [t.name for t in body.initializer] == ["Wt"]
    np.testing.assert_array_equal(numpy_helper.to_array(body.initializer[0]), w.T)
    assert all(n.name for n in body.node) and len(body.value_info) >= 1
    for a, b in zip(expected, run(m, feeds)):
        np.testing.assert_array_equal(a, b)
