"""FoldConstants: weight-only chains become one initializer; nothing else changes."""
import copy

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from _prep_util import F, apply_twice, check, init, make_model, run, vi
from fp8onnx.passes import FoldConstants, LiftConstants, UpgradeOpset
from fp8onnx.passes import fold_constants as fc


def _inits(m):
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _chain_model():
    """MatMul(x, Unsqueeze(Squeeze(Cast(Reshape(Transpose(W)))))) with W also feeding an Add."""
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float16)
    nodes = [
        helper.make_node("Transpose", ["W"], ["wt"], perm=[1, 0]),
        helper.make_node("Reshape", ["wt", "shape"], ["wr"]),
        helper.make_node("Cast", ["wr"], ["wc"], to=F),
        helper.make_node("Unsqueeze", ["wc", "ax"], ["wu"]),
        helper.make_node("Squeeze", ["wu", "ax"], ["wfinal"]),
        helper.make_node("MatMul", ["x", "wfinal"], ["h"]),
        helper.make_node("Cast", ["W"], ["w32"], to=F),
        helper.make_node("ReduceSum", ["w32"], ["wsum"], keepdims=0),
        helper.make_node("Add", ["h", "wsum"], ["y"]),
    ]
    inits = [init("W", w), init("shape", np.array([4, 6], np.int64)), init("ax", np.array([0], np.int64))]
    return make_model(nodes, [vi("x", [2, 4])], [vi("y", [2, 6])], inits), w


def test_weight_chain_folds_to_one_initializer():
    m, w = _chain_model()
    original, m, modified = apply_twice(FoldConstants(), m)
    assert modified
    check(m)
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Add"]
    got = _inits(m)
    # Inputs of folded nodes that nothing reads any more are gone.
    assert sorted(got) == ["wfinal", "wsum"]
    np.testing.assert_array_equal(got["wfinal"], w.T.astype(np.float32))
    assert got["wfinal"].dtype == np.float32
    np.testing.assert_allclose(got["wsum"], w.astype(np.float32).sum(), rtol=1e-6)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(m, {"x": x})[0], run(original, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_shared_weight_is_kept():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Transpose", ["W"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["h"]),
             helper.make_node("MatMul", ["h", "W"], ["y"])]
    m = make_model(nodes, [vi("x", [1, 3])], [vi("y", [1, 3])], [init("W", w)])
    apply_twice(FoldConstants(), m)
    assert sorted(_inits(m)) == ["W", "wt"]
    np.testing.assert_array_equal(_inits(m)["wt"], w.T)


def test_unsorted_graph_reaches_a_fixed_point():
    m, w = _chain_model()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))  # every producer after its consumer
    FoldConstants()(m)
    assert sorted(n.op_type for n in m.graph.node) == ["Add", "MatMul"]


def test_constant_node_inputs_and_fp8_dequantize():
    # DequantizeLinear(Constant FP8 codes, scale) -> float weight
    codes = np.array([0.5, -1.5, 448.0, 3.25], np.float32).astype(ml_dtypes.float8_e4m3fn)
    scale = np.float32(0.125)
    nodes = [
        helper.make_node("Constant", [], ["q"], value=numpy_helper.from_array(codes)),
        helper.make_node("DequantizeLinear", ["q", "s"], ["wd"]),
        helper.make_node("Mul", ["x", "wd"], ["y"]),
    ]
    m = make_model(nodes, [vi("x", [4])], [vi("y", [4])], [init("s", scale)])
    original, m, _ = apply_twice(FoldConstants(), m)
    assert [n.op_type for n in m.graph.node] == ["Mul"]  # the Constant is gone too
    np.testing.assert_array_equal(_inits(m)["wd"], codes.astype(np.float32) * scale)
    x = np.ones(4, np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])


@pytest.mark.parametrize("to, dtype", [(TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn),
                                       (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2)])
def test_cast_to_fp8_keeps_its_type(to, dtype):
    # onnxruntime hands FP8 back as uint8 codes: the folded tensor must still be FP8.
    w = np.array([0.3, -2.7, 100.0, 1e-3], np.float32)
    nodes = [helper.make_node("Cast", ["W"], ["w8"], to=to),
             helper.make_node("DequantizeLinear", ["x8", "one"], ["xd"]),
             helper.make_node("Cast", ["w8"], ["wf"], to=F),
             helper.make_node("Add", ["xd", "wf"], ["y"])]
    m = make_model(nodes, [vi("x8", [4], to)], [vi("y", [4])], [init("W", w), init("one", np.float32(1))])
    FoldConstants()(m)
    got = _inits(m)
    assert "w8" not in got and got["wf"].dtype == np.float32
    np.testing.assert_array_equal(got["wf"], w.astype(dtype).astype(np.float32))
    m2 = make_model(nodes[:1] + [helper.make_node("Identity", ["w8"], ["y"])], [vi("x8", [4], to)],
                    [vi("y", [4], to)], [init("W", w)])
    value, = fc.evaluate_node(m2.graph.node[0], [w], m2)
    assert value.dtype == dtype
    np.testing.assert_array_equal(value.view(np.uint8), w.astype(dtype).view(np.uint8))
    assert numpy_helper.from_array(value, "t").data_type == to


def test_onnxruntime_and_reference_agree():
    # The two evaluators on a table of weight-preprocessing ops (FP8 included).
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    cases = [
        (helper.make_node("Transpose", ["a"], ["o"], perm=[1, 0]), [w]),
        (helper.make_node("Reshape", ["a", "b"], ["o"]), [w, np.array([3, 8], np.int64)]),
        (helper.make_node("Cast", ["a"], ["o"], to=TensorProto.FLOAT16), [w]),
        (helper.make_node("Cast", ["a"], ["o"], to=TensorProto.FLOAT8E4M3FN), [w * 50]),
        (helper.make_node("QuantizeLinear", ["a", "b"], ["o"], saturate=1), [w * 50, np.float32(0.5)]),
        (helper.make_node("DequantizeLinear", ["a", "b"], ["o"]),
         [w.astype(ml_dtypes.float8_e5m2), np.float32(2.0)]),
        (helper.make_node("Mul", ["a", "b"], ["o"]), [w, w]),
        (helper.make_node("Concat", ["a", "b"], ["o"], axis=0), [w, w]),
        (helper.make_node("Slice", ["a", "b", "c"], ["o"]), [w, np.array([1], np.int64), np.array([3], np.int64)]),
        (helper.make_node("Gather", ["a", "b"], ["o"], axis=1), [w, np.array([5, 0, 2], np.int64)]),
        (helper.make_node("Unsqueeze", ["a", "b"], ["o"]), [w, np.array([0, 3], np.int64)]),
    ]
    from onnx.reference import ReferenceEvaluator

    model = make_model([], [], [])
    for node, inputs in cases:
        mini, feeds = fc._one_node_model(node, inputs, model)
        ours = fc._run_ort(mini, feeds)[0]
        ref = ReferenceEvaluator(mini).run(None, feeds)[0]
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, node.op_type
        np.testing.assert_array_equal(ours.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8), node.op_type)


def test_what_is_never_folded(monkeypatch):
    # Random ops, subgraph holders, graph outputs, initializers overridable by an input,
    # activations, and skip_ops.
    then_g = helper.make_graph([helper.make_node("Neg", ["W"], ["t"])], "then", [], [vi("t", [2])])
    else_g = helper.make_graph([helper.make_node("Abs", ["W"], ["e"])], "else", [], [vi("e", [2])])
    nodes = [
        helper.make_node("RandomNormalLike", ["W"], ["rnd"]),
        helper.make_node("If", ["cond"], ["iff"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Neg", ["W"], ["neg_out"]),  # a graph output
        helper.make_node("Relu", ["D"], ["d_relu"]),  # D has a default but is an input
        helper.make_node("Shape", ["x"], ["xs"]),  # activation
        helper.make_node("Cast", ["xs"], ["xsf"], to=F),
        helper.make_node("Abs", ["W"], ["skipped"]),
        helper.make_node("Sum", ["x", "rnd", "iff", "d_relu", "skipped"], ["s"]),
        helper.make_node("ReduceSum", ["xsf"], ["xsum"], keepdims=1),
        helper.make_node("Add", ["s", "xsum"], ["y"]),
    ]
    m = make_model(nodes, [vi("x", [2]), vi("D", [2])], [vi("y", [2]), vi("neg_out", [2])],
                   [init("W", np.array([1.0, -2.0], np.float32)), init("cond", np.array(True)),
                    init("D", np.array([3.0, 4.0], np.float32))])
    control = copy.deepcopy(m)
    before = m.SerializeToString()
    assert FoldConstants(skip_ops=["Abs"])(m).modified is False
    assert m.SerializeToString() == before
    # Control: without skip_ops exactly the Abs folds.
    assert FoldConstants()(control).modified
    assert [n.op_type for n in m.graph.node if n not in control.graph.node] == ["Abs"]
    np.testing.assert_array_equal(_inits(control)["skipped"], [1.0, 2.0])


def test_size_bound_is_checked_before_evaluating(monkeypatch):
    calls = []
    real = fc.evaluate_node
    monkeypatch.setattr(fc, "evaluate_node", lambda *a: calls.append(a[0].op_type) or real(*a))
    nodes = [
        helper.make_node("ConstantOfShape", ["big_shape"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Expand", ["one", "big_shape"], ["ones"]),
        helper.make_node("Tile", ["W", "reps"], ["tiled"]),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rng"]),
        helper.make_node("Tile", ["W", "small_reps"], ["small"]),
        helper.make_node("Sum", ["x", "zeros", "ones"], ["s1"]),
        helper.make_node("Sum", ["x", "tiled"], ["s2"]),
        helper.make_node("Sum", ["s1", "s2", "rng", "small"], ["y"]),
    ]
    inits = [init("big_shape", np.array([4096, 4096], np.int64)), init("one", np.ones(1, np.float32)),
             init("W", np.ones((1, 4), np.float32)), init("reps", np.array([4096, 1024], np.int64)),
             init("small_reps", np.array([4096, 1], np.int64)),
             init("r0", np.float32(0)), init("r1", np.float32(1 << 23)), init("r2", np.float32(1))]
    m = make_model(nodes, [vi("x", [4096, 4096])], [vi("y", [4096, 4096])], inits)
    _, m, modified = apply_twice(FoldConstants(max_bytes=1 << 20), m)
    # 64 MB outputs were predicted and never computed; the 64 KB Tile was folded.
    assert modified and calls == ["Tile"]
    assert sorted(n.op_type for n in m.graph.node) == ["ConstantOfShape", "Expand", "Range", "Sum", "Sum", "Sum", "Tile"]
    np.testing.assert_array_equal(_inits(m)["small"], np.ones((4096, 4), np.float32))


def test_subgraph_folds_its_own_constants_only():
    # Inside the branch, Transpose of the branch's own initializer folds; Neg of the
    # outer-scope W stays (only a body's own constants count).
    then_g = helper.make_graph(
        [helper.make_node("Transpose", ["L"], ["lt"], perm=[1, 0]),
         helper.make_node("Neg", ["W"], ["wn"]),
         helper.make_node("MatMul", ["x", "lt"], ["h"]),
         helper.make_node("Add", ["h", "wn"], ["t"])],
        "then", [], [vi("t", [1, 2])], [init("L", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))],
    )
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", [1, 2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [1, 2]), vi("c", [], TensorProto.BOOL)], [vi("y", [1, 2])],
                   [init("W", np.array([10.0, 20.0], np.float32))])
    original, m, modified = apply_twice(FoldConstants(), m)
    assert modified
    body = {a.name: a.g for a in m.graph.node[0].attribute}["then_branch"]
    assert [n.op_type for n in body.node] == ["Neg", "MatMul", "Add"]
    assert [t.name for t in body.initializer] == ["lt"]
    check(m)
    feeds = {"x": np.array([[1.0, 1.0]], np.float32), "c": np.array(True)}
    np.testing.assert_array_equal(run(m, feeds)[0], run(original, feeds)[0])


@pytest.mark.parametrize("entry", ["ppocr_rec", "ppocr_cls"])
def test_real_models(zoo_entry, entry):
    e = zoo_entry(entry)
    m = e.load()
    UpgradeOpset(19)(m)
    LiftConstants()(m)
    n_nodes = len(m.graph.node)
    original, m, modified = apply_twice(FoldConstants(), m)
    assert modified and len(m.graph.node) < n_nodes
    check(m)
    for feeds in e.calib_feeds(2):
        for a, b in zip(run(original, feeds), run(m, feeds)):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_huge_inputs_are_not_read(monkeypatch):
    calls = []
    monkeypatch.setattr(fc, "evaluate_node", lambda *a: calls.append(a[0].op_type))
    w = np.ones((1024, 1024), np.float32)  # 4 MiB
    m = make_model([helper.make_node("Transpose", ["W"], ["wt"], perm=[1, 0]),
                    helper.make_node("MatMul", ["x", "wt"], ["y"])],
                   [vi("x", [1, 1024])], [vi("y", [1, 1024])], [init("W", w)])
    assert FoldConstants(max_bytes=1 << 19)(m).modified is False and calls == []
    # Within 4 x max_bytes it is evaluated (then kept or dropped by its real size).
    assert FoldConstants(max_bytes=1 << 20)(m).modified is False
    assert calls == ["Transpose"]
