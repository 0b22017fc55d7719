"""InlineConstantIf: an If whose condition is known becomes the nodes of the branch it takes.

    c = Equal(16000, 16000) ; If(c, then={h = Conv(x, W); t = Relu(h)}, else={...}) -> y ; Sigmoid(y)
        ->  h = Conv(x, W) ; y = Relu(h) ; Sigmoid(y)

Calibration runs the float model with the tensors it needs as extra graph outputs, which
cannot reach inside a subgraph, so units in If branches get FP8 weights only. Exported
models often wrap the whole network in Ifs whose condition is fixed in practice (Silero
VAD branches on ``sr == 16000``; other exporters on ``Shape(x)[i] == k``); inlining the
taken branch puts the network back in the graph calibration observes.

A condition is known when it evaluates from constants (initializers that are not graph
inputs, Constant nodes) and from the static dims of shapes: ``Shape(x)``, ``Gather`` and
``Slice`` of it and ``Size`` read the dims ``value_info`` gives (run InferShapes first),
and other small deterministic ops on known values are evaluated with onnxruntime like
FoldConstants does. Names are looked up through the enclosing graphs, so an If in a
branch may depend on a constant of its parent.

The rewrite, in the graph holding the If (main graph or any subgraph):

* the taken branch's nodes replace the If node in place (the order stays topological);
* a branch output made by a branch node or initializer is renamed to the If's output (no
  node added); one that is an outer-scope name, a second use of the same tensor, or an
  initializer that must be an output of a subgraph, gets ``Identity -> y``;
* the other names the branch defines keep their names unless used anywhere else in the
  model, then get fresh ones from :class:`fp8onnx.graph.NameAllocator` (``name_1``...),
  and reads of them inside nested subgraphs follow; node names likewise;
* branch initializers move to the graph's initializers, Constant nodes move with the
  other nodes, the branch's value_info moves out (and types the If's outputs);
* the condition's now unread producers (Equal, Shape, Gather...) are removed.

It repeats until no If has a known condition, so nested Ifs whose condition becomes
known are inlined too (children after parents). Running it again reports no change.

Requires nothing. Example::

    InlineConstantIf()(model).modified     # True when any If was inlined
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from fp8onnx import graph as G
from fp8onnx.errors import PreconditionError
from fp8onnx.passinfra import Pass, PassResult

from .fold_constants import NONDETERMINISTIC, evaluate_node

__all__ = ["InlineConstantIf"]

log = logging.getLogger("fp8onnx.passes")

#: Ops on known values are evaluated only up to this many input bytes: conditions are
#: computed from scalars and shapes, and big constant work is FoldConstants' business.
MAX_EVAL_BYTES = 1 << 20
#: How far back a condition is traced; a condition on an activation stops at a graph input.
MAX_DEPTH = 64


class _Partial(list):
    """A 1-D int64 tensor (a shape) with some elements unknown (None)."""


class InlineConstantIf(Pass):
    """Replaces Ifs whose condition is known by the nodes of the branch they take."""

    def call(self, model):
        self.inlined: List[Tuple[str, str, bool]] = []  # (graph, If node, branch taken)
        while True:
            found = _find(model, model.graph, [])
            if found is None:
                break
            graph, node, taken = found
            self.inlined.append((graph.name, node.name or node.output[0], taken))
            _inline(model, graph, node, taken)
        if self.inlined:
            log.info("inlined %d If nodes with a known condition", len(self.inlined))
        return PassResult(model, bool(self.inlined))

    def ensures(self, model):
        for g in G.iter_graphs(model.graph):
            idx = G.GraphIndex(g)
            for node in g.node:
                if _is_if(node) and _takeable(node) and idx.is_constant(node.input[0]):
                    raise PreconditionError(f"If {node.name!r} still has a constant condition")


def _is_if(node: onnx.NodeProto) -> bool:
    return node.op_type == "If" and node.domain in ("", "ai.onnx") and len(node.input) == 1


def _branch(node: onnx.NodeProto, taken: bool) -> Optional[onnx.GraphProto]:
    want = "then_branch" if taken else "else_branch"
    return next((a.g for a in node.attribute if a.name == want), None)


def _takeable(node: onnx.NodeProto) -> bool:
    # If branches take no inputs by the spec; a malformed one is left alone.
    return all(_branch(node, t) is not None and not len(_branch(node, t).input) for t in (True, False))


def _find(model, g, parents):
    """(graph, If node, branch) of the first If with a known condition, parents first."""
    scopes = parents + [G.GraphIndex(g)]
    ev = _Evaluator(model, scopes)
    for node in g.node:
        if _is_if(node) and _takeable(node):
            value = ev.value(node.input[0], len(scopes) - 1, 0)
            if isinstance(value, np.ndarray) and value.size == 1:
                return g, node, bool(value.reshape(-1)[0])
    for node in g.node:
        for sub in G.subgraphs(node):
            found = _find(model, sub, scopes)
            if found is not None:
                return found
    return None


class _Evaluator:
    """Values of tensors of a graph and its enclosing graphs: arrays, _Partial shapes or None."""

    def __init__(self, model, scopes: List[G.GraphIndex]) -> None:
        self.model, self.scopes = model, scopes
        self.memo: Dict[Tuple[int, str], object] = {}

    def value(self, name: str, level: int, depth: int):
        for lv in range(level, -1, -1):
            idx = self.scopes[lv]
            if name in idx.producer:
                key = (lv, name)
                if key not in self.memo:
                    if depth > MAX_DEPTH:
                        return None
                    self.memo[key] = self._node_value(idx.producer[name], name, lv, depth + 1)
                return self.memo[key]
            if name in idx.all_inputs:
                return None  # fed at run time (an initializer listed as input is a default)
            if name in idx.initializers:
                return numpy_helper.to_array(idx.initializers[name])
        return None

    def shape(self, name: str, level: int, depth: int) -> Optional[_Partial]:
        v = self.value(name, level, depth)
        if isinstance(v, np.ndarray):
            return _Partial(v.shape)
        if isinstance(v, _Partial):
            return _Partial([len(v)])
        for lv in range(level, -1, -1):
            idx = self.scopes[lv]
            if name in idx.producer or name in idx.all_inputs or name in idx.initializers or name in idx.value_info:
                dims = idx.shape(name)
                if dims is None:
                    return None
                return _Partial(d if isinstance(d, int) else None for d in dims)
        return None

    def _node_value(self, node, name, level, depth):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return None
        if op == "Constant":
            return G.constant_array(node)
        if op == "Shape":
            dims = self.shape(node.input[0], level, depth)
            if dims is None:
                return None
            attrs = {a.name: a.i for a in node.attribute}
            return _known(_Partial(dims[slice(attrs.get("start", 0), attrs.get("end"))]))
        if op == "Size":
            dims = self.shape(node.input[0], level, depth)
            if dims is None or None in dims:
                return None
            return np.array(int(np.prod(dims, dtype=np.int64)), np.int64)
        args = [None if not i else self.value(i, level, depth) for i in node.input]
        if op in ("Gather", "Slice") and args and isinstance(args[0], _Partial):
            result = _partial_op(node, args)
            return _known(result) if isinstance(result, _Partial) else result
        if any(a is None or isinstance(a, _Partial) for a, i in zip(args, node.input) if i):
            return None
        if op in NONDETERMINISTIC or any(True for _ in G.subgraphs(node)):
            return None
        if sum(a.nbytes for a in args if a is not None) > MAX_EVAL_BYTES:
            return None
        results = evaluate_node(node, args, self.model)
        if results is None:
            return None
        outputs = [o for o in node.output if o]
        return results[outputs.index(name)]


def _known(p: Optional[_Partial]):
    """An int64 array when every element is known, else the partial value itself."""
    if p is None or any(d is None for d in p):
        return p
    return np.array(list(p), np.int64)


def _partial_op(node, args) -> Optional[_Partial]:
    data = args[0]
    rest = args[1:]
    if any(not isinstance(a, np.ndarray) for a in rest if a is not None):
        return None
    if node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        ind = rest[0] if rest else None
        if axis != 0 or ind is None or ind.ndim > 1:
            return None
        picked = [data[int(i)] for i in ind.reshape(-1)]
        if ind.ndim == 0:
            return picked[0] if picked[0] is None else np.array(picked[0], np.int64)
        return _Partial(picked)
    # Slice(data, starts, ends, axes, steps) on a 1-D shape, positive steps only.
    starts, ends = rest[0], rest[1] if len(rest) > 1 else None
    axes = rest[2] if len(rest) > 2 else None
    steps = rest[3] if len(rest) > 3 else None
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    if step < 1:
        return None
    return _Partial(data[int(starts.reshape(-1)[0]):int(ends.reshape(-1)[0]):step])


# --- the rewrite --------------------------------------------------------------------------

def _inline(model: onnx.ModelProto, g: onnx.GraphProto, if_node: onnx.NodeProto, taken: bool) -> None:
    branch = onnx.GraphProto()
    branch.CopyFrom(_branch(if_node, taken))
    outside_tensors, outside_nodes = _names_outside(model.graph, if_node)
    alloc = G.NameAllocator(model)
    graph_outputs = {v.name for v in g.output}
    inits = {t.name for t in branch.initializer}
    defined = inits | {o for n in branch.node for o in n.output if o}

    rename: Dict[str, str] = {}
    identities: List[Tuple[str, str]] = []   # (branch tensor, If output)
    for y, b in zip(if_node.output, (v.name for v in branch.output)):
        if not y:
            continue
        if b in defined and b not in rename and not (b in inits and y in graph_outputs):
            rename[b] = y
        else:
            identities.append((b, y))
    for name in sorted(defined - set(rename)):
        if name in outside_tensors:
            rename[name] = alloc.tensor(name)

    nodes = []
    for n in branch.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        _rename_node(new, rename)
        if new.name and new.name in outside_nodes:
            new.name = alloc.node(new.name)
        nodes.append(new)
    for b, y in identities:
        nodes.append(onnx.helper.make_node("Identity", [rename.get(b, b)], [y], name=alloc.node(f"{y}_identity")))

    described = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)}
    new_vi = []
    typed = [(rename.get(v.name, v.name), v) for v in branch.value_info]
    typed += [(y, v) for y, v in zip(if_node.output, branch.output) if y]  # types the If's outputs
    for name, vi in typed:
        if name not in described and vi.type.HasField("tensor_type"):
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(vi)
            copy.name = name
            new_vi.append(copy)
            described.add(name)

    for t in branch.initializer:
        t.name = rename.get(t.name, t.name)
    if g is model.graph and model.ir_version < 4:
        g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in branch.initializer)

    cond = if_node.input[0]
    dropped_reads = G.outer_scope_inputs(_branch(if_node, not taken))
    position = next(i for i, n in enumerate(g.node) if n is if_node)
    rebuilt = list(g.node[:position]) + nodes + list(g.node[position + 1:])
    del g.node[:]
    g.node.extend(rebuilt)
    g.initializer.extend(branch.initializer)
    g.value_info.extend(new_vi)
    _drop_dead_chain(g, [cond] + dropped_reads)


def _rename_node(node: onnx.NodeProto, rename: Dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        if name in rename:
            node.input[i] = rename[name]
    for i, name in enumerate(node.output):
        if name in rename:
            node.output[i] = rename[name]
    for sub in G.subgraphs(node):
        _rename_reads(sub, rename)


def _rename_reads(g: onnx.GraphProto, rename: Dict[str, str]) -> None:
    """Renames outer-scope reads inside a nested subgraph (names it defines shadow them)."""
    own = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    visible = {k: v for k, v in rename.items() if k not in own}
    if not visible:
        return
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in visible:
                n.input[i] = visible[name]
        for sub in G.subgraphs(n):
            _rename_reads(sub, visible)
    for v in g.output:
        if v.name in visible:
            v.name = visible[v.name]


def _names_outside(graph: onnx.GraphProto, skip: onnx.NodeProto) -> Tuple[Set[str], Set[str]]:
    """Tensor and node names used anywhere in the model except inside ``skip``'s branches."""
    tensors: Set[str] = set()
    nodes: Set[str] = set()
    for g in _graphs_except(graph, skip):
        tensors.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
        tensors.update(t.name for t in g.initializer)
        for n in g.node:
            tensors.update(n.input)
            tensors.update(n.output)
            if n.name and n is not skip:
                nodes.add(n.name)
    return tensors, nodes


def _graphs_except(graph, skip):
    yield graph
    for node in graph.node:
        if node is skip:
            continue
        for sub in G.subgraphs(node):
            yield from _graphs_except(sub, skip)


def _drop_dead_chain(g: onnx.GraphProto, names: List[str]) -> None:
    """Removes what only fed the condition or the dropped branch, once nothing reads it
    (nodes and initializers of this graph; graph inputs and outputs stay)."""
    pending = list(names)
    idx = G.GraphIndex(g)
    while pending:
        name = pending.pop()
        if not name or idx.consumers.get(name) or name in idx.graph_outputs or name in idx.all_inputs:
            continue
        producer = idx.producer.get(name)
        if producer is not None:
            if any(idx.consumers.get(o) or o in idx.graph_outputs for o in producer.output if o):
                continue
            kept = [n for n in g.node if n is not producer]
            del g.node[:]
            g.node.extend(kept)
            pending.extend(list(producer.input) + [n for sub in G.subgraphs(producer) for n in G.outer_scope_inputs(sub)])
        elif name in idx.initializers:
            kept = [t for t in g.initializer if t.name != name]
            del g.initializer[:]
            g.initializer.extend(kept)
        else:
            continue
        idx = G.GraphIndex(g)
