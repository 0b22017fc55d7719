"""Graph helpers: the one place that reads and edits ONNX graphs for the passes.

Passes work on ``onnx.ModelProto`` in place and reach the protobufs only through these
plain functions, so edits stay consistent (names unique, order topological) and
repeated runs give the same bytes.

>>> idx = GraphIndex(model.graph)            # doctest: +SKIP
>>> idx.producer["conv1_out"].op_type          # doctest: +SKIP
'Conv'
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "GraphIndex",
    "NameAllocator",
    "iter_graphs",
    "subgraphs",
    "constant_array",
    "toposort",
    "set_metadata",
    "outer_scope_inputs",
    "remove_unused",
]


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, parents before children."""
    yield graph
    for node in graph.node:
        for g in subgraphs(node):
            yield from iter_graphs(g)


class GraphIndex:
    """Producers, consumers and constants of one graph, built once per use.

    An index is a snapshot: rebuild it after editing the graph.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: Dict[str, onnx.NodeProto] = {}
        self.consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.all_inputs = {v.name for v in graph.input}
        # Inputs the caller must feed; an initializer also listed as an input is a default
        # the caller may override, so it is in all_inputs but not constant.
        self.graph_inputs = self.all_inputs - set(self.initializers)
        self.graph_outputs = {v.name for v in graph.output}
        self.value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in set(_node_reads(node)):
                self.consumers[name].append(node)

    def is_constant(self, name: str) -> bool:
        """True for initializers (not overridable by an input) and Constant-node outputs."""
        if name in self.initializers and name not in self.all_inputs:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def constant(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant tensor, or None when ``name`` is not constant here."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return constant_array(p)
        return None

    def elem_type(self, name: str) -> Optional[int]:
        """The tensor's element type where the graph says it, else None."""
        if name in self.initializers:
            return self.initializers[name].data_type
        vi = self.value_info.get(name)
        if vi is not None and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type or None
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            arr = constant_array(p)
            return onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) if arr is not None else None
        return None

    def shape(self, name: str) -> Optional[Tuple]:
        """The tensor's shape as a tuple of ints and dim names (None for unknown dims)."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        vi = self.value_info.get(name)
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return None
        return tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim
        )


def constant_array(node: onnx.NodeProto) -> Optional[np.ndarray]:
    """The value a Constant node produces (any of its value_* attributes)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def _node_reads(node: onnx.NodeProto) -> List[str]:
    """Every tensor ``node`` reads, including outer-scope names used inside its subgraphs."""
    names = [i for i in node.input if i]
    for g in subgraphs(node):
        names.extend(outer_scope_inputs(g))
    return names


def outer_scope_inputs(graph: onnx.GraphProto) -> List[str]:
    """Names a (sub)graph reads that it does not define itself, in first-use order."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    seen, result = set(), []
    for node in graph.node:
        for name in _node_reads(node):
            if name not in defined and name not in seen:
                seen.add(name)
                result.append(name)
        defined.update(o for o in node.output if o)
    for v in graph.output:
        if v.name not in defined and v.name not in seen:
            seen.add(v.name)
            result.append(v.name)
    return result


class NameAllocator:
    """Hands out readable names that collide with nothing in the model, deterministically.

    Tensor names and node names are separate namespaces in ONNX, so a Q node and its
    output tensor may both be called ``x_q``: ``tensor()`` and ``node()`` keep apart.
    """

    def __init__(self, model_or_graph) -> None:
        graph = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
        self.tensors, self.nodes = set(), set()
        for g in iter_graphs(graph):
            self.tensors.update(v.name for v in list(g.input) + list(g.output) + list(g.value_info))
            self.tensors.update(t.name for t in g.initializer)
            for n in g.node:
                self.tensors.update(n.output)
                self.tensors.update(n.input)
                if n.name:
                    self.nodes.add(n.name)

    @staticmethod
    def _fresh(taken: set, base: str) -> str:
        name, k = base, 1
        while name in taken or not name:
            name = f"{base}_{k}"
            k += 1
        taken.add(name)
        return name

    def tensor(self, base: str) -> str:
        """A new tensor name: ``base``, or ``base_1``, ``base_2``... where taken."""
        return self._fresh(self.tensors, base)

    def node(self, base: str) -> str:
        """A new node name, from the node namespace."""
        return self._fresh(self.nodes, base)


def toposort(graph: onnx.GraphProto) -> bool:
    """Orders ``graph.node`` topologically, keeping the existing order where it is free.

    Returns True when the order changed. Raises ValueError on a cycle or a read of a
    tensor nobody produces (naming it).
    """
    nodes = list(graph.node)
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    producer_idx = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer_idx[o] = i
    deps = [set() for _ in nodes]
    users = defaultdict(list)
    for i, n in enumerate(nodes):
        for name in _node_reads(n):
            j = producer_idx.get(name)
            if j is not None and j != i:
                deps[i].add(j)
            elif j is None and name not in available:
                # Outer-scope names of a subgraph are resolved by the parent: fine here.
                continue
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    indegree = [len(d) for d in deps]
    ready = [i for i, k in enumerate(indegree) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op_type for i in range(len(nodes)) if i not in set(order)]
        raise ValueError(f"graph {graph.name!r} has a cycle through nodes {stuck[:5]}")
    if order == list(range(len(nodes))):
        return False
    new = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(new)
    return True


def remove_unused(graph: onnx.GraphProto) -> bool:
    """Drops nodes whose outputs nobody reads and initializers nobody reads (this graph only)."""
    changed = False
    while True:
        idx = GraphIndex(graph)
        keep_outputs = idx.graph_outputs
        dead = [
            n for n in graph.node
            if not any(o in keep_outputs or idx.consumers.get(o) for o in n.output if o)
        ]
        if not dead:
            break
        dead_ids = {id(n) for n in dead}
        kept = [n for n in graph.node if id(n) not in dead_ids]
        del graph.node[:]
        graph.node.extend(kept)
        changed = True
    idx = GraphIndex(graph)
    graph_input_names = {v.name for v in graph.input}
    unused = [
        t for t in graph.initializer
        if not idx.consumers.get(t.name) and t.name not in idx.graph_outputs and t.name not in graph_input_names
    ]
    if unused:
        names = {t.name for t in unused}
        kept = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        changed = True
    return changed


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> bool:
    """Sets ``metadata_props[key]``; returns True when the value changed."""
    for prop in model.metadata_props:
        if prop.key == key:
            if prop.value == value:
                return False
            prop.value = value
            return True
    model.metadata_props.add(key=key, value=value)
    return True


DETACHED_LOCATION = "<fp8onnx-detached>"


def copy_fields(dst, src, skip=()) -> None:
    """Copies the set fields of protobuf message ``src`` into ``dst``, except ``skip``.

    Fields are visited by descriptor, so a skipped bytes field (``raw_data``) is never
    read: reading it would materialise a copy of the whole tensor.
    """
    for field in src.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            values = getattr(src, field.name)
            if len(values):
                getattr(dst, field.name).extend(values)
        elif src.HasField(field.name):
            if field.type == field.TYPE_MESSAGE:
                getattr(dst, field.name).CopyFrom(getattr(src, field.name))
            else:
                setattr(dst, field.name, getattr(src, field.name))


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data computed from dims and type (its data is not read)."""
    n = 1
    for d in t.dims:
        n *= d
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return n


def weightless_copy(model: onnx.ModelProto, min_bytes: int = 1 << 20) -> onnx.ModelProto:
    """A copy of ``model`` whose large main-graph initializers are stubs without data.

    Each initializer of at least ``min_bytes`` becomes name, type and dims only, marked as
    external data at a location that does not exist. Tools that need only shapes (shape
    inference, the version converter) can run on the copy: it costs no second copy of
    the weights and serialises even when the model is over protobuf's 2 GB limit. The
    model itself is not modified. Bring a tool's result back with
    :func:`copy_shape_info` or :func:`adopt_structure`.
    """
    copy = onnx.ModelProto()
    copy_fields(copy, model, skip=("graph",))
    copy_fields(copy.graph, model.graph, skip=("initializer",))
    for t in model.graph.initializer:
        stub = copy.graph.initializer.add()
        if t.HasField("raw_data") and tensor_nbytes(t) >= min_bytes:
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            stub.external_data.add(key="location", value=DETACHED_LOCATION)
        else:
            stub.CopyFrom(t)
    return copy


def _is_stub(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == DETACHED_LOCATION for e in t.external_data
    )


def copy_shape_info(model: onnx.ModelProto, inferred: onnx.ModelProto) -> None:
    """Copies value_info, inputs and outputs of every graph of ``inferred`` into ``model``.

    ``inferred`` is ``model`` (or its :func:`weightless_copy`) after shape inference: the
    same graphs and nodes. Raises ValueError when the graph structure differs.
    """
    pairs = list(zip(iter_graphs(model.graph), iter_graphs(inferred.graph)))
    if len(pairs) != sum(1 for _ in iter_graphs(inferred.graph)) or any(
        len(a.node) != len(b.node) for a, b in pairs
    ):
        raise ValueError("copy_shape_info: the inferred model does not have the model's graphs")
    for dst, src in pairs:
        for field in ("value_info", "input", "output"):
            if list(getattr(dst, field)) != list(getattr(src, field)):
                del getattr(dst, field)[:]
                getattr(dst, field).extend(getattr(src, field))


def adopt_structure(model: onnx.ModelProto, new: onnx.ModelProto) -> None:
    """Makes ``model`` what ``new`` says, keeping the model's own weight data.

    ``new`` is a tool's output for :func:`weightless_copy` of ``model``: every field is
    taken from it, except that main-graph initializers it still holds as stubs keep the
    model's tensor of that name in place (not copied). Raises ValueError when a stub
    names a tensor the model does not have.
    """
    _replace_fields(model, new, skip=("graph",))
    _replace_fields(model.graph, new.graph, skip=("initializer",))
    mine = {t.name: i for i, t in enumerate(model.graph.initializer)}
    wanted = [t.name for t in new.graph.initializer]
    for t in new.graph.initializer:
        if _is_stub(t) and t.name not in mine:
            raise ValueError(f"adopt_structure: no data for tensor {t.name!r}")
    if [t.name for t in model.graph.initializer] != wanted:
        # Rare (the converter seldom adds or drops initializers): rebuild in the new order.
        kept = {t.name: t for t in model.graph.initializer}
        rebuilt = [kept[t.name] if _is_stub(t) else t for t in new.graph.initializer]
        del model.graph.initializer[:]
        model.graph.initializer.extend(rebuilt)
        return
    for dst, src in zip(model.graph.initializer, new.graph.initializer):
        if not _is_stub(src) and dst != src:
            dst.CopyFrom(src)


def _replace_fields(dst, src, skip=()) -> None:
    for field in dst.DESCRIPTOR.fields:
        if field.name not in skip:
            dst.ClearField(field.name)
    copy_fields(dst, src, skip=skip)


def drop_initializer_inputs(graph: onnx.GraphProto) -> List[str]:
    """Removes from ``graph.input`` the names that are initializers; returns them.

    Before IR version 4 every initializer had to be listed as a graph input; from IR 4
    on, such an input is an overridable default, so tools treat the weight as a runtime
    input rather than a constant. Upgrading an IR < 4 model therefore drops them.
    """
    inits = {t.name for t in graph.initializer}
    dropped = [v.name for v in graph.input if v.name in inits]
    if dropped:
        kept = [v for v in graph.input if v.name not in inits]
        del graph.input[:]
        graph.input.extend(kept)
    return dropped
