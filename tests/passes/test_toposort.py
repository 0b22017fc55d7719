"""TopologicalSort: every graph ordered producers-first, stable where already valid."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from _prep_util import apply_twice, check, make_model, run, vi
from fp8onnx.errors import UserError
from fp8onnx.passes import TopologicalSort


def _shuffle(nodes, seed):
    nodes = list(nodes)
    order = np.random.default_rng(seed).permutation(len(nodes))
    return [nodes[i] for i in order]


def _chain(reverse):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Neg", ["a"], ["b"], name="b"),
             helper.make_node("Abs", ["x"], ["c"], name="c"),
             helper.make_node("Add", ["b", "c"], ["y"], name="y")]
    return make_model(reversed(nodes) if reverse else nodes, [vi("x", [2])], [vi("y", [2])])


def test_sorted_graph_is_left_byte_identical():
    m = _chain(False)
    before = m.SerializeToString()
    assert TopologicalSort()(m).modified is False
    assert m.SerializeToString() == before


def test_reversed_graph_is_sorted():
    _, m, modified = apply_twice(TopologicalSort(), _chain(True))
    assert modified
    check(m)
    # Stable: among ready nodes the existing order is kept (c came first in the input).
    assert [n.name for n in m.graph.node] == ["c", "a", "b", "y"]
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], np.abs(x) - np.maximum(x, 0))


def test_subgraph_bodies_are_sorted_and_outer_reads_count():
    body = helper.make_graph(
        [helper.make_node("Add", ["t1", "h"], ["t"], name="b2"),  # h comes from the outer graph
         helper.make_node("Relu", ["x"], ["t1"], name="b1")],
        "then", [], [vi("t", [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], name="if", then_branch=body, else_branch=other),
                    helper.make_node("Neg", ["x"], ["h"], name="h")],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    _, m, modified = apply_twice(TopologicalSort(), m)
    assert modified
    assert [n.name for n in m.graph.node] == ["h", "if"]
    then_g = {a.name: a.g for a in m.graph.node[1].attribute}["then_branch"]
    assert [n.name for n in then_g.node] == ["b1", "b2"]
    check(m)
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x, "c": np.array(True)})[0], np.maximum(x, 0) - x)


def test_cycle_is_a_user_error():
    m = make_model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                    helper.make_node("Neg", ["a"], ["b"], name="n2"),
                    helper.make_node("Identity", ["a"], ["y"], name="n3")],
                   [vi("x", [2])], [vi("y", [2])])
    with pytest.raises(UserError, match=r"model is invalid: graph 'g' has a cycle through nodes \['n1', 'n2'"):
        TopologicalSort()(m)


def test_real_model_shuffled(zoo_entry):
    e = zoo_entry("ppocr_cls")
    m = e.load()
    reference = e.load()
    nodes = _shuffle(m.graph.node, 0)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    _, m, modified = apply_twice(TopologicalSort(), m)
    assert modified
    check(m)
    feeds = next(iter(e.calib_feeds(1)))
    np.testing.assert_array_equal(run(m, feeds)[0], run(reference, feeds)[0])
