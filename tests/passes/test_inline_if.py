"""InlineConstantIf: Ifs with a known condition become the taken branch's nodes.

Each case builds the model with both condition values and checks the inlined model
against onnxruntime on the original, plus the structure (Before/Expected)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from _prep_util import F, apply_twice, check, init, make_model, run, vi
from fp8onnx import graph as G
from fp8onnx.passes import FoldConstants, InferShapes, InlineConstantIf

B = TensorProto.BOOL


def _ifs(m):
    return sum(n.op_type == "If" for g in G.iter_graphs(m.graph) for n in g.node)


def _graph(name, nodes, outputs, inits=()):
    return helper.make_graph(nodes, name, [], outputs, list(inits))


def _simple(c: bool, as_constant_node=False):
    """Before: y = If(c) then {t = Relu(x) * W_then} else {e = Neg(x)}; z = y + 1.
    Expected (c true): h = Relu(x); y = Mul(h, W_then); z = Add(y, one)."""
    then_g = _graph("then", [helper.make_node("Relu", ["x"], ["h"], name="relu"),
                             helper.make_node("Mul", ["h", "w_then"], ["t"], name="mul")],
                    [vi("t", [2])], [init("w_then", np.array([2.0, 3.0], np.float32))])
    else_g = _graph("else", [helper.make_node("Neg", ["x"], ["e"], name="neg")], [vi("e", [2])])
    cond = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(c)))] \
        if as_constant_node else []
    nodes = cond + [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
                    helper.make_node("Add", ["y", "one"], ["z"], name="add")]
    inits = [init("one", np.array(1.0, np.float32))] + ([] if as_constant_node else [init("c", np.array(c))])
    return make_model(nodes, [vi("x", [2])], [vi("z", [2])], inits)


@pytest.mark.parametrize("as_constant_node", [False, True])
@pytest.mark.parametrize("c", [True, False])
def test_constant_condition_takes_its_branch(c, as_constant_node):
    m = _simple(c, as_constant_node)
    original, m, modified = apply_twice(InlineConstantIf(), m)
    assert modified
    check(m)
    if c:
        assert [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node] == [
            ("Relu", ["x"], ["h"]), ("Mul", ["h", "w_then"], ["y"]), ("Add", ["y", "one"], ["z"])]
        assert sorted(t.name for t in m.graph.initializer) == ["one", "w_then"]  # c is gone
    else:
        assert [(n.op_type, list(n.output)) for n in m.graph.node] == [("Neg", ["y"]), ("Add", ["z"])]
    x = np.array([-1.5, 2.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])


def test_runtime_condition_is_left_alone():
    m = _simple(True)
    m.graph.initializer.pop(-1)                      # c becomes a graph input
    m.graph.input.append(vi("c", [], B))
    assert not InlineConstantIf()(m).modified and _ifs(m) == 1


def test_initializer_that_is_also_an_input_is_no_constant():
    m = _simple(True)
    m.graph.input.append(vi("c", [], B))             # an overridable default
    assert not InlineConstantIf()(m).modified


def test_outer_scope_outputs_get_identity_and_shared_outputs():
    """Before: (y1, y2, y3) = If(c) then {outputs: x (outer), t, t} with t = Relu(x).
    Expected: y2 = Relu(x); y1 = Identity(x); y3 = Identity(y2)."""
    then_g = _graph("then", [helper.make_node("Relu", ["x"], ["t"])], [vi("x", [2]), vi("t", [2]), vi("t", [2])])
    else_g = _graph("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2]), vi("e", [2]), vi("x", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y1", "y2", "y3"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [2])], [vi("y1", [2]), vi("y2", [2]), vi("y3", [2])], [init("c", np.array(True))])
    original, m, modified = apply_twice(InlineConstantIf(), m)
    assert modified
    check(m)
    got = [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node]
    assert got == [("Relu", ["x"], ["y2"]), ("Identity", ["x"], ["y1"]), ("Identity", ["y2"], ["y3"])]
    # onnxruntime refuses the original (a subgraph returning an outer name): compare by hand.
    x = np.array([-1.0, 4.0], np.float32)
    for got, want in zip(run(m, {"x": x}), (x, np.maximum(x, 0), np.maximum(x, 0))):
        np.testing.assert_array_equal(got, want)


def test_name_clashes_get_fresh_names_and_follow_into_nested_subgraphs():
    """The branch defines ``h`` and ``w`` and names a node ``n``: names a sibling If's
    branch (kept: its condition is an input) and a main-graph node also use. A Loop inside
    the inlined branch reads ``h`` from the outer scope."""
    loop_body = helper.make_graph(
        [helper.make_node("Add", ["acc", "h"], ["acc2"]), helper.make_node("Identity", ["cin"], ["cout"])],
        "body", [vi("i", [], TensorProto.INT64), vi("cin", [], B), vi("acc", [2])], [vi("cout", [], B), vi("acc2", [2])])
    then_g = _graph("then", [helper.make_node("Mul", ["x", "w"], ["h"], name="n"),
                             helper.make_node("Loop", ["three", "", "h"], ["t"], name="loop", body=loop_body)],
                    [vi("t", [2])], [init("w", np.array([5.0, 7.0], np.float32))])
    else_g = _graph("else", [helper.make_node("Identity", ["x"], ["e"])], [vi("e", [2])])
    sibling_then = _graph("st", [helper.make_node("Sub", ["x", "w"], ["h"]), helper.make_node("Neg", ["h"], ["so"])],
                          [vi("so", [2])], [init("w", np.array([1.0, 1.0], np.float32))])
    sibling_else = _graph("se", [helper.make_node("Identity", ["x"], ["se_o"])], [vi("se_o", [2])])
    m = make_model(
        [helper.make_node("Neg", ["x"], ["x_neg"], name="n"),
         helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
         helper.make_node("If", ["c2"], ["s"], name="sibling", then_branch=sibling_then, else_branch=sibling_else),
         helper.make_node("Mul", ["y", "x_neg"], ["z0"]), helper.make_node("Add", ["z0", "s"], ["z"])],
        [vi("x", [2]), vi("c2", [], B)], [vi("z", [2])],
        [init("c", np.array(True)), init("three", np.array(3, np.int64))])
    original, m, modified = apply_twice(InlineConstantIf(), m)
    assert modified and _ifs(m) == 1
    check(m)
    assert [n.name for n in m.graph.node][:3] == ["n", "n_1", "loop"]
    mul, loop = m.graph.node[1], m.graph.node[2]
    assert list(mul.input) == ["x", "w_1"] and list(mul.output) == ["h_1"]
    assert list(loop.input) == ["three", "", "h_1"] and list(loop.output) == ["y"]
    body = next(a.g for a in loop.attribute if a.name == "body")
    assert list(body.node[0].input) == ["acc", "h_1"]   # the outer-scope read follows the rename
    assert sorted(t.name for t in m.graph.initializer) == ["three", "w_1"]
    x = np.array([1.0, -2.0], np.float32)
    for c2 in (True, False):
        feeds = {"x": x, "c2": np.array(c2)}
        np.testing.assert_array_equal(run(m, feeds)[0], run(original, feeds)[0])


def _nested(outer: bool, inner: bool):
    """If(c1) then {k = Constant(inner); If(k) then {Relu(x) * 2} else {Neg(x)}} else {x + 10}."""
    inner_then = _graph("it", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["it_o"])],
                        [vi("it_o", [2])])
    inner_else = _graph("ie", [helper.make_node("Neg", ["x"], ["ie_o"])], [vi("ie_o", [2])])
    then_g = _graph("then", [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(inner))),
        helper.make_node("If", ["k"], ["t"], name="inner", then_branch=inner_then, else_branch=inner_else)],
        [vi("t", [2])], [init("two", np.array(2.0, np.float32))])
    else_g = _graph("else", [helper.make_node("Add", ["x", "ten"], ["e"])], [vi("e", [2])])
    return make_model([helper.make_node("If", ["c1"], ["y"], name="outer", then_branch=then_g, else_branch=else_g)],
                      [vi("x", [2])], [vi("y", [2])],
                      [init("c1", np.array(outer)), init("ten", np.array(10.0, np.float32))])


@pytest.mark.parametrize("outer,inner", [(True, True), (True, False), (False, True)])
def test_nested_ifs_inline_to_a_fixed_point(outer, inner):
    m = _nested(outer, inner)
    p = InlineConstantIf()
    original, m, modified = apply_twice(p, m)
    assert modified and _ifs(m) == 0
    check(m)
    assert not any(n.op_type == "Constant" for n in m.graph.node)   # k fed the inner If only
    x = np.array([-3.0, 4.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])
    expected = (2 * np.maximum(x, 0) if inner else -x) if outer else x + 10
    np.testing.assert_array_equal(run(m, {"x": x})[0], expected)


def test_inner_if_on_a_constant_of_the_parent_inlines_inside_a_kept_branch():
    """The outer If depends on an input (kept); its branch holds an If on a main-graph constant."""
    m = _nested(True, True)
    outer_then = next(a.g for a in m.graph.node[0].attribute if a.name == "then_branch")
    del outer_then.node[0]                               # the inner If now reads main's ``k``
    m.graph.initializer.append(init("k", np.array(False)))
    m.graph.initializer.remove(next(t for t in m.graph.initializer if t.name == "c1"))
    m.graph.input.append(vi("c1", [], B))
    original, m, modified = apply_twice(InlineConstantIf(), m)
    assert modified and _ifs(m) == 1
    check(m)
    x = np.array([-3.0, 4.0], np.float32)
    for c in (True, False):
        feeds = {"x": x, "c1": np.array(c)}
        np.testing.assert_array_equal(run(m, feeds)[0], run(original, feeds)[0])


def _shape_if(batch_dim):
    """If(Equal(Gather(Shape(x), 1), 4)) then {ReduceSum(x, axis 1)} else {ReduceMax(x, axis 1)}
    with x declared [batch_dim, 4]: dim 1 is static, so the condition is known."""
    then_g = _graph("then", [helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0)], [vi("s", [batch_dim])])
    else_g = _graph("else", [helper.make_node("ReduceMax", ["x", "ax"], ["mx"], keepdims=0)], [vi("mx", [batch_dim])])
    nodes = [helper.make_node("Shape", ["x"], ["sh"]),
             helper.make_node("Gather", ["sh", "one"], ["d1"], axis=0),
             helper.make_node("Equal", ["d1", "four"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    return make_model(nodes, [vi("x", [batch_dim, 4])], [vi("y", [batch_dim])],
                      [init("one", np.array(1, np.int64)), init("four", np.array(4, np.int64)),
                       init("ax", np.array([1], np.int64))])


def test_condition_on_a_static_dim_is_known_and_its_chain_removed():
    m = _shape_if("N")
    original, m, modified = apply_twice(InlineConstantIf(), m)
    assert modified
    check(m)
    assert [n.op_type for n in m.graph.node] == ["ReduceSum"]
    assert sorted(t.name for t in m.graph.initializer) == ["ax"]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])


def test_condition_on_a_dynamic_dim_is_unknown():
    m = _shape_if("N")
    m.graph.node[1].input[1] = "zero"                    # Shape(x)[0]: the batch, dynamic
    m.graph.initializer.append(init("zero", np.array(0, np.int64)))
    assert not InlineConstantIf()(m).modified


def test_value_info_moves_out_for_shape_inference():
    then_g = _graph("then", [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["t"])],
                    [vi("t", [2, 3])])
    then_g.value_info.append(vi("h", [2, 3]))
    else_g = _graph("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2, 3])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
                    helper.make_node("Sigmoid", ["y"], ["z"])],
                   [vi("x", [2, 3])], [vi("z", [2, 3])], [init("c", np.array(True))])
    InlineConstantIf()(m)
    idx = G.GraphIndex(m.graph)
    assert idx.shape("h") == (2, 3) and idx.shape("y") == (2, 3)


def test_folding_first_makes_equal_of_constants_known():
    # Equal(sr, 16000) with sr an initializer: known by evaluation even before folding,
    # and after FoldConstants the condition is a plain initializer.
    def model():
        m = _simple(True)
        m.graph.initializer.pop(-1)
        m.graph.initializer.extend([init("sr", np.array(16000, np.int64)), init("k", np.array(16000, np.int64))])
        m.graph.node.insert(0, helper.make_node("Equal", ["sr", "k"], ["c"]))
        return m

    direct = model()
    assert InlineConstantIf()(direct).modified
    folded = model()
    FoldConstants()(folded)
    InferShapes()(folded)
    assert InlineConstantIf()(folded).modified
    x = np.array([-1.0, 3.0], np.float32)
    want = run(_simple(True), {"x": x})[0]
    for m in (direct, folded):
        check(m)
        assert _ifs(m) == 0 and not any(t.name in ("sr", "k") for t in m.graph.initializer)
        np.testing.assert_array_equal(run(m, {"x": x})[0], want)


def test_branch_initializer_output_of_the_main_graph():
    """A branch output that is a branch initializer: renamed in place, no Identity."""
    then_g = _graph("then", [], [vi("w", [2])], [init("w", np.array([1.0, 2.0], np.float32))])
    else_g = _graph("else", [helper.make_node("Neg", ["x"], ["e"])], [vi("e", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
                    helper.make_node("Add", ["x", "y"], ["z"])],
                   [vi("x", [2])], [vi("z", [2])], [init("c", np.array(True))])
    original, m, _ = apply_twice(InlineConstantIf(), m)
    check(m)
    assert [t.name for t in m.graph.initializer] == ["y"] and [n.op_type for n in m.graph.node] == ["Add"]
    x = np.array([1.0, 1.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(original, {"x": x})[0])
