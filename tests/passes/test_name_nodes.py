"""NameNodes: unique, stable node names; duplicate tensor producers are rejected."""
import copy

import numpy as np
import pytest
from onnx import TensorProto, helper

from _prep_util import apply_twice, check, make_model, run, vi
from fp8onnx import graph as G
from fp8onnx.errors import UserError
from fp8onnx.passes import NameNodes


def _names(m):
    return [n.name for g in G.iter_graphs(m.graph) for n in g.node]


def _without_names(m):
    m = copy.deepcopy(m)
    for g in G.iter_graphs(m.graph):
        for n in g.node:
            n.ClearField("name")
    return m.SerializeToString()


def _model():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="act"),
                                helper.make_node("Neg", ["t"], ["t2"])], "then", [], [vi("t2", [2])])
    else_g = helper.make_graph([helper.make_node("Abs", ["x"], ["e"], name="act"),
                                helper.make_node("Neg", ["e"], ["e2"], name="If_y")], "else", [], [vi("e2", [2])])
    nodes = [
        helper.make_node("Relu", ["x"], ["r/out:0"]),  # nameless, unsafe characters
        helper.make_node("Neg", ["r/out:0"], ["n"], name="act"),  # same name as in both branches
        helper.make_node("Neg", ["n"], ["n2"], name="Neg_n2"),
        helper.make_node("Neg", ["n2"], ["n3"], name="Neg_n2"),  # duplicate
        helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),  # derived name taken
        helper.make_node("Add", ["y", "n3"], ["z"]),
    ]
    return make_model(nodes, [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("z", [2])])


def test_names_are_unique_non_empty_and_readable():
    original, m, modified = apply_twice(NameNodes(), _model())
    assert modified
    names = _names(m)
    assert all(names) and len(set(names)) == len(names)
    # First occurrences keep their names; the others get op type + first output, with a
    # suffix when that is taken (the else branch's "If_y" exists, so the If gets "If_y_1").
    # make_node stores attributes sorted by name: the else branch is visited first.
    assert names == ["Relu_r_out_0", "act", "Neg_n2", "Neg_n3", "If_y_1", "Add_z",
                     "Abs_e", "If_y", "Relu_t", "Neg_t2"]
    check(m)
    # Only names changed.
    assert _without_names(m) == _without_names(original)
    # onnxruntime refuses the original ("two nodes with same node name"); the result runs.
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x, "c": np.array(True)})[0], -2 * np.maximum(x, 0))
    np.testing.assert_array_equal(run(m, {"x": x, "c": np.array(False)})[0], -np.abs(x) - np.maximum(x, 0))


def test_deterministic():
    a, b = _model(), _model()
    NameNodes()(a)
    NameNodes()(b)
    assert a.SerializeToString() == b.SerializeToString()


def test_long_output_names_are_truncated():
    long = "x" * 300
    m = make_model([helper.make_node("Relu", ["a"], [long]), helper.make_node("Relu", [long], ["b"])],
                   [vi("a", [1])], [vi("b", [1])])
    NameNodes()(m)
    assert len(m.graph.node[0].name) <= 80 and m.graph.node[0].name.startswith("Relu_xxx")


def test_two_producers_of_one_tensor_are_rejected():
    m = make_model([helper.make_node("Relu", ["x"], ["h"], name="first"),
                    helper.make_node("Neg", ["x"], ["h"]),
                    helper.make_node("Identity", ["h"], ["y"])],
                   [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(UserError, match=r"model is invalid: tensor 'h' is produced by a nameless Neg node in the "
                                        r"main graph but is already produced by Relu node 'first'"):
        NameNodes()(m)


def test_node_redefining_an_input_or_outer_name_is_rejected():
    m = make_model([helper.make_node("Relu", ["x"], ["x"], name="r")], [vi("x", [2])], [vi("x", [2])])
    with pytest.raises(UserError, match="tensor 'x' is produced by Relu node 'r' .* already an input of the main graph"):
        NameNodes()(m)
    body = helper.make_graph([helper.make_node("Neg", ["x"], ["h"], name="inner")], "then", [], [vi("h", [2])])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["k"])], "else", [], [vi("k", [2])])
    m = make_model([helper.make_node("Relu", ["x"], ["h"], name="outer"),
                    helper.make_node("If", ["c"], ["y"], name="cond", then_branch=body, else_branch=other)],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    with pytest.raises(UserError, match=r"tensor 'h' is produced by Neg node 'inner' in the subgraph 'then' of If node "
                                        r"'cond' but is already produced by Relu node 'outer'"):
        NameNodes()(m)


def test_sibling_branches_may_reuse_tensor_names():
    a = helper.make_graph([helper.make_node("Neg", ["x"], ["h"])], "then", [], [vi("h", [2])])
    b = helper.make_graph([helper.make_node("Abs", ["x"], ["h"])], "else", [], [vi("h", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=a, else_branch=b)],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    check(m)
    _, m, modified = apply_twice(NameNodes(), m)
    assert modified and sorted(_names(m)) == ["Abs_h", "If_y", "Neg_h"]


def test_real_model(zoo_entry):
    m = zoo_entry("ppocr_rec").load()
    assert len(set(_names(m))) < len(m.graph.node)  # paddle2onnx leaves duplicate or empty names
    _, m, modified = apply_twice(NameNodes(), m)
    names = _names(m)
    assert modified and all(names) and len(set(names)) == len(names)
