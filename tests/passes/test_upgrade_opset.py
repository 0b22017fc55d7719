"""UpgradeOpset: old-opset models reach opset 19 and compute the same outputs."""
import copy

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from _prep_util import apply_twice, check, init, make_model, run, vi
from fp8onnx.errors import UserError
from fp8onnx.passes import UpgradeOpset
from fp8onnx.passes.upgrade_opset import default_opset


def _opset(m, domain=""):
    return {op.domain: op.version for op in m.opset_import}.get(domain)


def _stamp(m):
    m.producer_name, m.producer_version = "exporter", "1.2.3"
    m.domain, m.model_version, m.doc_string = "org.example", 7, "model doc"
    m.graph.doc_string = "graph doc"
    m.metadata_props.add(key="labels", value="cat\ndog")
    m.metadata_props.add(key="author", value="me")
    return m


def _kept(m):
    return (m.producer_name, m.producer_version, m.domain, m.model_version, m.doc_string,
            m.graph.doc_string, [(p.key, p.value) for p in m.metadata_props])


@pytest.mark.parametrize("entry", ["ppocr_det", "ppocr_rec", "ppocr_cls"])
def test_real_paddle_models_upgrade_with_identical_outputs(zoo_entry, entry):
    e = zoo_entry(entry)
    m = _stamp(e.load())
    old = default_opset(m)
    assert old in (11, 12)
    kept = _kept(m)
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified and _opset(m) == 19 and m.ir_version >= 9
    assert _kept(m) == kept
    check(m)
    # Real input: rendered text lines / pages from the zoo.
    for feeds in e.calib_feeds(2):
        for a, b in zip(run(original, feeds), run(m, feeds)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_detached_weights_give_the_same_model(zoo_entry):
    # The >1 GB path (weights detached while converting), forced on a real model.
    e = zoo_entry("ppocr_rec")
    from fp8onnx.passes import LiftConstants

    m = e.load()
    LiftConstants()(m)  # weights as initializers, so there is something to detach
    from fp8onnx import graph as G

    stubs = [t for t in G.weightless_copy(m).graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert len(stubs) >= 1  # the rec model has weights of 1 MiB or more
    plain, detached = copy.deepcopy(m), copy.deepcopy(m)
    UpgradeOpset(19)(plain)
    UpgradeOpset(19, detach_bytes=0)(detached)
    assert detached.SerializeToString() == plain.SerializeToString()


def test_already_at_target_is_untouched():
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=21, ir_version=10)
    before = m.SerializeToString()
    assert UpgradeOpset(19)(m).modified is False
    assert m.SerializeToString() == before


def test_other_domains_are_untouched():
    # LabelEncoder (ai.onnx.ml) next to default-domain ops at opset 12.
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ArgMax", ["r"], ["idx"], axis=1, keepdims=0),
        helper.make_node("LabelEncoder", ["idx"], ["label"], domain="ai.onnx.ml",
                         keys_int64s=[0, 1, 2], values_strings=["a", "b", "c"], default_string="?"),
    ]
    m = make_model(nodes, [vi("x", [1, 3])], [vi("label", [1], TensorProto.STRING)], opset=12, ir_version=7,
                   extra_opsets=[helper.make_opsetid("ai.onnx.ml", 2)])
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified and _opset(m) == 19 and _opset(m, "ai.onnx.ml") == 2
    assert [n.domain for n in m.graph.node if n.op_type == "LabelEncoder"] == ["ai.onnx.ml"]
    x = np.array([[0.1, 3.0, -1.0]], np.float32)
    assert run(m, {"x": x})[0].tolist() == run(original, {"x": x})[0].tolist() == ["b"]


def test_ops_with_changed_signatures_are_rewritten():
    # opset 10 -> 19: Split's 'split' attribute, ReduceSum's and Squeeze's 'axes' become inputs.
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3]),
        helper.make_node("ReduceSum", ["b"], ["s"], axes=[1], keepdims=1),
        helper.make_node("Squeeze", ["s"], ["sq"], axes=[1]),
        helper.make_node("Squeeze", ["a"], ["aq"], axes=[1]),
        helper.make_node("Add", ["sq", "aq"], ["y"]),
    ]
    m = make_model(nodes, [vi("x", [2, 4])], [vi("y", [2])], opset=10, ir_version=5)
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified
    check(m)
    split = next(n for n in m.graph.node if n.op_type == "Split")
    assert len(split.input) == 2 and not any(a.name == "split" for a in split.attribute)
    # The converter's new Constant nodes (split sizes, axes) are initializers now.
    assert not [n for n in m.graph.node if n.op_type == "Constant"]
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in m.graph.initializer}
    assert inits[split.input[1]] == [1, 3]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(m, {"x": x})[0], x[:, 0] + x[:, 1:].sum(1))
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])


def test_subgraphs_are_converted():
    then_g = helper.make_graph([helper.make_node("Squeeze", ["x"], ["t"], axes=[0])], "then", [], [vi("t", [3])])
    else_g = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["e"], axes=[0], keepdims=0)], "else", [],
                               [vi("e", [3])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [1, 3]), vi("c", [], TensorProto.BOOL)], [vi("y", [3])], opset=11, ir_version=6)
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified
    check(m)
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_array_equal(run(m, feeds)[0], run(original, feeds)[0])


def test_local_functions_are_inlined_then_converted():
    fn = helper.make_function(
        "custom", "ScaledSqueeze", ["X"], ["Y"],
        [helper.make_node("Squeeze", ["X"], ["S"], axes=[0]), helper.make_node("Mul", ["S", "S"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 12)],
    )
    m = make_model([helper.make_node("ScaledSqueeze", ["x"], ["y"], domain="custom")],
                   [vi("x", [1, 3])], [vi("y", [3])], opset=12, ir_version=8,
                   extra_opsets=[helper.make_opsetid("custom", 1)])
    m.functions.append(fn)
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified and not m.functions and _opset(m) == 19
    # Squeeze-13 takes its axes as an input: the converter adds a Constant for it, which
    # becomes an initializer.
    assert {n.op_type for n in m.graph.node} == {"Squeeze", "Mul"}
    assert [numpy_helper.to_array(t).tolist() for t in m.graph.initializer] == [[0]]
    assert all(n.domain == "" for n in m.graph.node)
    check(m)
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])


def test_unknown_op_fails_with_a_clear_message():
    m = make_model([helper.make_node("NoSuchOp", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=12,
                   ir_version=7)
    before = m.SerializeToString()
    with pytest.raises(UserError) as info:
        UpgradeOpset(19)(m)
    msg = str(info.value)
    assert "\n" not in msg
    assert "from ONNX opset 12 to opset 19" in msg
    assert "'NoSuchOp'" in msg and "no schema" in msg
    assert "re-export the model with opset >= 19" in msg
    assert m.SerializeToString() == before


def test_converter_failure_fails_with_a_clear_message():
    # BatchNormalization-5 reading inputs nobody defines: the converter gives up.
    m = make_model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
                   [vi("x", [1, 2])], [vi("y", [1, 2])], opset=5, ir_version=3)
    with pytest.raises(UserError, match=r"from ONNX opset 5 to opset 19 \(version converter: Input s is undefined!\); "
                                        r"re-export the model with opset >= 19 from its framework"):
        UpgradeOpset(19)(m)


def test_ir3_model_initializer_inputs_are_dropped():
    # IR 3 required initializers to be graph inputs; from IR 4 that would make W an
    # overridable input, so the upgrade drops those inputs.
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    m = make_model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                   [vi("x", [1, 3]), vi("W", [3, 2])], [vi("y", [1, 2])], [init("W", w)], opset=7, ir_version=3)
    x = np.array([[1.0, -1.0, 2.0]], np.float32)
    expected = np.maximum(x @ w, 0)
    original, m, modified = apply_twice(UpgradeOpset(19), m)
    assert modified and m.ir_version == 9 and [v.name for v in m.graph.input] == ["x"]
    check(m)
    np.testing.assert_array_equal(run(m, {"x": x})[0], expected)
    np.testing.assert_array_equal(run(original, {"x": x})[0], expected)  # IR 3: W is not a feed
    from fp8onnx.graph import GraphIndex

    assert GraphIndex(m.graph).is_constant("W")
