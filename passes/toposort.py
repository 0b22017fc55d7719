"""TopologicalSort: orders the nodes of every graph so each is after its producers.

Keeps the existing order wherever it is already valid (a stable sort), so a sorted model
is left byte-identical. Subgraph bodies are sorted too; outer-scope names they read
count as dependencies of the node holding them.

    [Relu(h) -> y, MatMul(x, W) -> h]   ->   [MatMul(x, W) -> h, Relu(h) -> y]

Requires nothing; raises UserError on a cycle (the model is invalid).

Example::

    TopologicalSort()(model).modified   # True when any graph's order changed
"""
from __future__ import annotations

from fp8onnx import graph as G
from fp8onnx.errors import UserError
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["TopologicalSort"]


class TopologicalSort(Pass):
    """Runs :func:`fp8onnx.graph.toposort` on the main graph and every subgraph."""

    name = "toposort"

    def call(self, model):
        changed = False
        # The parent is sorted before iter_graphs descends into its (new) node list.
        for g in G.iter_graphs(model.graph):
            try:
                changed |= G.toposort(g)
            except ValueError as e:
                raise UserError(f"model is invalid: {e}; re-export it from its framework") from e
        return PassResult(model, changed)
