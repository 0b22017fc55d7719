"""LiftConstants: Constant nodes become initializers with the same name and value."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from _prep_util import F, apply_twice, check, make_model, run, vi
from fp8onnx.passes import LiftConstants


def _const(out, **kw):
    return helper.make_node("Constant", [], [out], name=f"c_{out}", **kw)


def test_every_value_kind_is_lifted():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    nodes = [
        _const("w", value=numpy_helper.from_array(w)),
        _const("f", value_float=2.5),
        _const("fs", value_floats=[1.0, 2.0, 3.0, 4.0]),
        _const("i", value_int=3),
        _const("is", value_ints=[1, 4]),
        _const("s", value_string=b"hi"),
        _const("ss", value_strings=[b"a", b"bc"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "f"], ["h2"]),
        helper.make_node("Add", ["h2", "fs"], ["h3"]),
        helper.make_node("Reshape", ["h3", "is"], ["h4"]),
        helper.make_node("Cast", ["i"], ["i_f"], to=F),
        helper.make_node("Add", ["h4", "i_f"], ["y"]),
        helper.make_node("Identity", ["s"], ["s_out"]),
        helper.make_node("Identity", ["ss"], ["ss_out"]),
    ]
    m = make_model(
        nodes, [vi("x", [1, 3])],
        [vi("y", [1, 4]), vi("s_out", [], TensorProto.STRING), vi("ss_out", [2], TensorProto.STRING)],
    )
    check(m)
    original, m, modified = apply_twice(LiftConstants(), m)
    assert modified
    check(m)
    assert not [n for n in m.graph.node if n.op_type == "Constant"]
    got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_array_equal(got["w"], w)
    assert got["f"].dtype == np.float32 and got["f"] == 2.5
    np.testing.assert_array_equal(got["fs"], [1, 2, 3, 4])
    assert got["i"].dtype == np.int64 and got["i"] == 3
    np.testing.assert_array_equal(got["is"], [1, 4])
    strings = {t.name: list(t.string_data) for t in m.graph.initializer}
    assert strings["s"] == [b"hi"] and strings["ss"] == [b"a", b"bc"]
    assert got["s"].shape == () and got["ss"].shape == (2,)
    x = np.random.default_rng(0).standard_normal((1, 3)).astype(np.float32)
    for a, b in zip(run(original, {"x": x}), run(m, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_constant_that_is_a_graph_output_stays_a_node():
    m = make_model(
        [_const("k", value=numpy_helper.from_array(np.ones(2, np.float32))),
         _const("w", value_floats=[1.0, 2.0]),
         helper.make_node("Add", ["x", "w"], ["y"])],
        [vi("x", [2])], [vi("y", [2]), vi("k", [2])],
    )
    _, m, modified = apply_twice(LiftConstants(), m)
    assert modified
    assert [n.output[0] for n in m.graph.node if n.op_type == "Constant"] == ["k"]
    assert [t.name for t in m.graph.initializer] == ["w"]
    check(m)
    np.testing.assert_array_equal(run(m, {"x": np.zeros(2, np.float32)})[1], [1, 1])


def test_sparse_value_is_left_alone():
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("v", F, [1], [5.0]), helper.make_tensor("i", TensorProto.INT64, [1], [2]), [4]
    )
    m = make_model([_const("s", sparse_value=sparse), helper.make_node("Add", ["x", "s"], ["y"])],
                   [vi("x", [4])], [vi("y", [4])])
    result = LiftConstants()(m)
    assert not result.modified and m.graph.node[0].op_type == "Constant"


def _if_model():
    """y = If(c) then (x + Wt) else (x * We); each branch holds its weight in a Constant,
    and the else branch also outputs a Constant directly."""
    then_g = helper.make_graph(
        [_const("wt", value=numpy_helper.from_array(np.array([1.0, 2.0], np.float32))),
         helper.make_node("Add", ["x", "wt"], ["t_out"])],
        "then", [], [vi("t_out", [2]), vi("t_k", [2])],
    )
    then_g.node.append(_const("t_k", value_floats=[7.0, 7.0]))
    else_g = helper.make_graph(
        [_const("we", value_floats=[3.0, 4.0]),
         helper.make_node("Mul", ["x", "we"], ["e_out"]),
         _const("e_k", value_floats=[9.0, 9.0])],
        "else", [], [vi("e_out", [2]), vi("e_k", [2])],
    )
    node = helper.make_node("If", ["c"], ["y", "k"], then_branch=then_g, else_branch=else_g)
    return make_model([node], [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2]), vi("k", [2])])


def test_subgraphs_lift_into_their_own_initializers():
    m = _if_model()
    original, m, modified = apply_twice(LiftConstants(), m)
    assert modified
    branches = {a.name: a.g for a in m.graph.node[0].attribute}
    then_g, else_g = branches["then_branch"], branches["else_branch"]
    assert [t.name for t in then_g.initializer] == ["wt"]
    assert [t.name for t in else_g.initializer] == ["we"]
    # Branch outputs that are Constants stay nodes.
    assert [n.output[0] for n in then_g.node if n.op_type == "Constant"] == ["t_k"]
    assert [n.output[0] for n in else_g.node if n.op_type == "Constant"] == ["e_k"]
    assert not m.graph.initializer
    check(m)
    x = np.array([5.0, 6.0], np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        for a, b in zip(run(original, feeds), run(m, feeds)):
            np.testing.assert_array_equal(a, b)


def test_loop_body():
    body = helper.make_graph(
        [_const("step", value_floats=[0.5, 0.5]),
         helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("acc_in", [2])],
        [vi("cond_out", [], TensorProto.BOOL), vi("acc_out", [2])],
    )
    m = make_model(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        [vi("x", [2]), vi("n", [], TensorProto.INT64)], [vi("y", [2])],
    )
    original, m, modified = apply_twice(LiftConstants(), m)
    assert modified and [t.name for t in m.graph.node[0].attribute[0].g.initializer] == ["step"]
    check(m)
    feeds = {"x": np.zeros(2, np.float32), "n": np.array(4, np.int64)}
    np.testing.assert_array_equal(run(m, feeds)[0], [2.0, 2.0])
    np.testing.assert_array_equal(run(original, feeds)[0], run(m, feeds)[0])


def test_old_ir_version_lists_lifted_weights_as_inputs():
    # IR 3: initializers must be graph inputs. UpgradeOpset later drops those inputs.
    from fp8onnx.passes import UpgradeOpset

    m = make_model([_const("w", value_floats=[1.0, 2.0]), helper.make_node("Add", ["x", "w"], ["y"])],
                   [vi("x", [2])], [vi("y", [2])], opset=7, ir_version=3)
    original, m, modified = apply_twice(LiftConstants(), m)
    assert modified and [v.name for v in m.graph.input] == ["x", "w"] and [t.name for t in m.graph.initializer] == ["w"]
    check(m)
    x = np.array([3.0, 4.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], [4.0, 6.0])
    UpgradeOpset(19)(m)
    assert [v.name for v in m.graph.input] == ["x"] and m.ir_version == 9
    np.testing.assert_array_equal(run(m, {"x": x})[0], [4.0, 6.0])


@pytest.mark.parametrize("entry", ["ppocr_det", "ppocr_rec", "ppocr_cls"])
def test_real_paddle_models(zoo_entry, entry):
    e = zoo_entry(entry)
    m = e.load()
    n_const = sum(n.op_type == "Constant" for n in m.graph.node)
    assert n_const > 100  # paddle2onnx stores every weight in a Constant node
    original, m, modified = apply_twice(LiftConstants(), m)
    assert modified
    assert len(m.graph.initializer) == n_const - sum(n.op_type == "Constant" for n in m.graph.node)
    assert len(m.graph.initializer) >= 0.95 * n_const
    feeds = next(iter(e.calib_feeds(1)))
    for a, b in zip(run(original, feeds), run(m, feeds)):
        np.testing.assert_array_equal(a, b)
