"""InferShapes: value_info gets the shapes onnxruntime actually computes."""
import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from _prep_util import F, apply_twice, init, make_model, run, vi
from fp8onnx.graph import GraphIndex
from fp8onnx.passes import InferShapes, LiftConstants, UpgradeOpset


def _with_outputs(model, names):
    m = copy.deepcopy(model)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def test_fills_value_info_and_keeps_the_rest():
    w = np.ones((4, 8), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0])]
    m = make_model(nodes, [vi("x", ["N", 4])], [vi("y", None)], [init("w", w)])
    original, m, modified = apply_twice(InferShapes(), m)
    assert modified
    idx = GraphIndex(m.graph)
    assert idx.shape("h") == ("N", 8) and idx.shape("r") == ("N", 8) and idx.shape("y") == (8, "N")
    assert idx.elem_type("r") == F
    # Only shape information changed.
    for field in ("node", "initializer", "input"):
        assert getattr(m.graph, field) == getattr(original.graph, field)


def test_data_propagation_makes_reshape_static():
    # Reshape(x, Concat(Shape(x)[0], -1)) : the target shape is computed from Shape.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("zero1", np.array([0], np.int64)),
             init("minus1", np.array([-1], np.int64))]
    m = make_model(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], inits)
    InferShapes()(m)
    assert GraphIndex(m.graph).shape("y") == (2, 12)
    m2 = make_model(nodes, [vi("x", [2, 3, 4])], [vi("y", None)], inits)
    InferShapes(data_prop=False)(m2)
    assert GraphIndex(m2.graph).shape("y") != (2, 12)


def test_subgraph_value_info():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t1"]), helper.make_node("Neg", ["t1"], ["t"])],
                               "then", [], [vi("t", None)])
    else_g = helper.make_graph([helper.make_node("Abs", ["x"], ["e1"]), helper.make_node("Neg", ["e1"], ["e"])],
                               "else", [], [vi("e", None)])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [2, 5]), vi("c", [], TensorProto.BOOL)], [vi("y", None)])
    _, m, modified = apply_twice(InferShapes(), m)
    assert modified
    for a in m.graph.node[0].attribute:
        assert [GraphIndex(a.g).shape(v.name) for v in a.g.value_info] == [(2, 5)]


def test_detached_path_gives_the_same_value_info(zoo_entry):
    m = zoo_entry("ppocr_rec").load()
    UpgradeOpset(19)(m)
    LiftConstants()(m)
    del m.graph.value_info[:]
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    InferShapes()(a)
    InferShapes(detach_bytes=0)(b)  # the >1 GB path, forced
    assert a.SerializeToString() == b.SerializeToString()
    assert len(a.graph.value_info) == len(a.graph.node) - 1  # every node output but the graph output


@pytest.mark.parametrize("entry", ["ppocr_rec", "ppocr_cls"])
def test_inferred_shapes_match_onnxruntime_on_real_models(zoo_entry, entry):
    e = zoo_entry(entry)
    m = e.load()
    UpgradeOpset(19)(m)
    LiftConstants()(m)
    del m.graph.value_info[:]
    _, m, modified = apply_twice(InferShapes(), m)
    assert modified
    vis = [v for v in m.graph.value_info if v.type.HasField("tensor_type")]
    assert len(vis) > 200
    feeds = next(iter(e.calib_feeds(1)))
    actual = dict(zip([v.name for v in vis], run(_with_outputs(m, [v.name for v in vis]), feeds)))
    checked_dims = 0
    for v in vis:
        tt = v.type.tensor_type
        arr = actual[v.name]
        assert onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) == arr.dtype, v.name
        if tt.HasField("shape"):
            assert len(tt.shape.dim) == arr.ndim, v.name
            for d, n in zip(tt.shape.dim, arr.shape):
                if d.HasField("dim_value") and d.dim_value >= 0:  # paddle2onnx writes -1 for "any"
                    assert d.dim_value == n, (v.name, d.dim_value, n)
                    checked_dims += 1
    assert checked_dims > 300


def test_inference_failure_is_a_user_error(monkeypatch):
    from onnx import shape_inference

    from fp8onnx.errors import UserError

    def broken(*a, **k):
        raise shape_inference.InferenceError("[ShapeInferenceError] (op_type:Conv): kernel rank mismatch")

    monkeypatch.setattr(shape_inference, "infer_shapes", broken)
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(UserError, match=r"ONNX shape inference failed on the model \(\[ShapeInferenceError\] "
                                        r"\(op_type:Conv\): kernel rank mismatch\); the model is inconsistent"):
        InferShapes()(m)


def test_a_declared_output_shape_the_graph_contradicts_is_replaced_and_said(caplog):
    # ddddocr's recogniser declares [1, seqlen] for a [steps, 1, 8210] output; kept, it made
    # the compiled model fail onnx's full check. A compatible declaration is kept as it is.
    m = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"], name="r"),
                    helper.make_node("Relu", ["x"], ["z"], name="relu")],
                   [vi("x", [24])], [vi("y", [1, "n"]), vi("z", ["batch"])],
                   [init("shape", np.array([2, 3, 4], np.int64))])
    with pytest.raises(Exception):
        onnx.checker.check_model(m, full_check=True)
    with caplog.at_level("WARNING", logger="fp8onnx.passes"):
        out = InferShapes()(m).model
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    assert dims(out.graph.output[0]) == [2, 3, 4]
    assert dims(out.graph.output[1]) == ["batch"]
    assert "output 'y' is declared [1, n] but the graph computes [2, 3, 4]" in caplog.text
    onnx.checker.check_model(out, full_check=True)
