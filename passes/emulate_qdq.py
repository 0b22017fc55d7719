"""EmulateQDQ: run a native FP8 Q/DQ model on fp8onnx's fused kernels, bit for bit.

    DequantizeLinear(QuantizeLinear(x, s, zp), s, zp)  ->  FakeQuant(x, s)      activations
    DequantizeLinear(W_fp8, s, zp)                      ->  Dequantize(W_u8, s)  weights

Evaluating a ``qdq`` model on onnxruntime runs its FP8 QuantizeLinear/DequantizeLinear
kernels (about 8.5 ns per element); the ``ai.fp8onnx`` ops run the same arithmetic in
about 0.9 ns and give onnxruntime's bits (tests/test_kernels*.py), so the rewritten copy
scores exactly as the original does, faster. :func:`fp8onnx.evaluation.data.session_for`
and :func:`fp8onnx.zoo.base.ort_session` use it for evaluation; a deployed model keeps its
native Q/DQ.

What is rewritten, in the main graph and in If/Loop/Scan bodies:

* a ``QuantizeLinear`` to an FP8 type that ``fp8onnx.formats`` maps (E4M3FN, E5M2,
  E4M3FNUZ, E5M2FNUZ), zero point absent or 0, float32 input and scale, no
  ``block_size``, whose output is read only by ``DequantizeLinear`` nodes of the same
  graph with the same scale (the same tensor or equal constants), the same zero point
  type and the same axis (where the scale is per axis). It becomes one ``FakeQuant``
  with the Q's format, axis and ``saturate``, writing the first DQ's output; further
  DQs of the same Q become ``Identity`` of it (names and graph outputs stay).
* a ``DequantizeLinear`` of an FP8 initializer of the same graph (a weight), zero point
  absent or 0, float32 scale: it becomes the custom ``Dequantize`` of the same bytes as
  a uint8 initializer ``<weight>_u8``, keeping the node's name and output.

Why ``Dequantize`` and not a float initializer holding the decoded weight: onnxruntime
does not constant-fold DequantizeLinear, so in the native model a weight reaches its
Conv/MatMul as a computed tensor and onnxruntime neither fuses BatchNormalization into
that Conv nor pre-packs or re-lays it (NCHWc). A float initializer would let it do all
that, which changes the order of the sums and so the bits (measured on the digits CNN:
E4M3 outputs off by up to 0.08). The custom op keeps the weight computed; sessions must
then not fold it (``InferenceSession(..., fold_constants=False)``). Decoding costs about
1 ns per weight per run, against about 8.5 ns for onnxruntime's own DequantizeLinear.

Left alone, each with the reason in the debug log: INT8/UINT8 Q/DQ (onnxruntime fuses
them into integer QLinear ops whose rounding float emulation does not reproduce),
blocked quantization (``block_size``), a nonzero or non-constant zero point, float16 or
bfloat16 scales or inputs, a Q output that a graph output or another op also reads,
weights that a subgraph reads from an enclosing graph, and formats fp8onnx does not have.

Example::

    from fp8onnx.passes import EmulateQDQ
    result = EmulateQDQ()(model)          # edits model in place: copy it first
    InferenceSession(result.model, fold_constants=False)
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from fp8onnx import formats as _formats
from fp8onnx import graph as G
from fp8onnx.errors import PreconditionError
from fp8onnx.passinfra import Pass, PassResult
from fp8onnx.runtime import ops

__all__ = ["EmulateQDQ", "fp8_format_of", "has_native_fp8_qdq"]

log = logging.getLogger("fp8onnx.passes")

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
#: ONNX element type -> fp8onnx format, for the FP8 formats ONNX has (INT8 excluded).
_FP8_BY_TYPE = {f.onnx_type: f for f in _formats.FORMATS.values() if f.is_float and f.onnx_type}


def fp8_format_of(elem_type: Optional[int]) -> Optional[_formats.Format]:
    """The fp8onnx format of an ONNX FP8 element type, None for anything else."""
    return _FP8_BY_TYPE.get(elem_type)


def has_native_fp8_qdq(model: onnx.ModelProto) -> bool:
    """Whether any graph of ``model`` holds a QuantizeLinear/DequantizeLinear whose zero
    point or output type is an FP8 type, or a DequantizeLinear of an FP8 initializer."""
    for g in G.iter_graphs(model.graph):
        fp8_inits = {t.name for t in g.initializer if t.data_type in _FP8_BY_TYPE}
        for n in g.node:
            if n.domain not in ("", "ai.onnx") or n.op_type not in (_Q, _DQ):
                continue
            if any(i in fp8_inits for i in n.input[:3] if i):
                return True
            if n.op_type == _Q and _attr(n, "output_dtype", 0) in _FP8_BY_TYPE:
                return True
    return False


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Scope:
    """Constants and element types visible in one graph, enclosing graphs included."""

    def __init__(self, graph: onnx.GraphProto, parent: Optional["_Scope"]) -> None:
        self.index = G.GraphIndex(graph)
        self.parent = parent
        self.defined = ({v.name for v in graph.input} | set(self.index.initializers)
                        | set(self.index.producer))

    def constant(self, name: str) -> Optional[np.ndarray]:
        if name in self.defined:
            return self.index.constant(name) if self.index.is_constant(name) else None
        return self.parent.constant(name) if self.parent else None

    def elem_type(self, name: str) -> Optional[int]:
        if name in self.defined or self.parent is None:
            return self.index.elem_type(name)
        return self.parent.elem_type(name)


class EmulateQDQ(Pass):
    """Rewrites native FP8 Q/DQ into ``ai.fp8onnx`` FakeQuant/Dequantize (see the module)."""

    name = "emulate_qdq"

    def __init__(self) -> None:
        super().__init__()
        #: (node name, reason) of each FP8 Q/DQ node left native by the last run.
        self.skipped: List[Tuple[str, str]] = []

    def call(self, model):
        self.skipped = []
        self._opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        names = G.NameAllocator(model)
        changed = self._graph(model.graph, None, names)
        if changed and not any(o.domain == ops.DOMAIN for o in model.opset_import):
            model.opset_import.append(ops.opset_import())
        return PassResult(model, changed)

    def ensures(self, model):
        # The runtime can run what was written: the domain is imported, formats are known.
        custom = [n for g in G.iter_graphs(model.graph) for n in g.node if n.domain == ops.DOMAIN]
        if custom and not any(o.domain == ops.DOMAIN for o in model.opset_import):
            raise PreconditionError(f"{ops.DOMAIN} nodes but no opset_import for the domain")
        known = set(_formats.names())
        for n in custom:
            if _attr(n, "format", b"").decode() not in known:
                raise PreconditionError(f"node {n.name!r} names an unknown format")

    # -- one graph --------------------------------------------------------------------
    def _graph(self, graph: onnx.GraphProto, parent: Optional[_Scope], names: G.NameAllocator) -> bool:
        scope = _Scope(graph, parent)
        self._u8: Dict[str, str] = {}  # FP8 initializer -> its uint8 copy, in this graph
        replace: Dict[int, List[onnx.NodeProto]] = {}  # id(old node) -> new nodes
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or id(node) in replace:
                continue
            if node.op_type == _Q:
                new = self._activation(node, scope, names)
                if new:
                    replace.update(new)
            elif node.op_type == _DQ:
                new_node = self._weight(node, scope, graph, names)
                if new_node is not None:
                    replace[id(node)] = [new_node]
        changed = bool(replace)
        if changed:
            kept = []
            for node in graph.node:
                kept.extend(replace.get(id(node), [node]))
            del graph.node[:]
            graph.node.extend(kept)
            self._describe_outputs(graph, scope, [n for new in replace.values() for n in new])
        # Subgraphs after this graph's edits (outer-scope names they read still exist),
        # and the cleanup after theirs: a zero point they shared may be unread only now.
        outer = None
        for node in graph.node:
            for sub in G.subgraphs(node):
                outer = outer or _Scope(graph, parent)
                changed |= self._graph(sub, outer, names)
        if changed:
            self._drop_value_info(graph)
            G.remove_unused(graph)
        return changed

    # -- activations: Q -> DQ pairs ---------------------------------------------------
    def _activation(self, q: onnx.NodeProto, scope: _Scope, names: G.NameAllocator):
        fmt, why = self._q_format(q, scope)
        if fmt is None:
            return self._skip(q, why)
        x, s = q.input[0], q.input[1]
        if _attr(q, "block_size", 0):
            return self._skip(q, "blocked quantization (block_size)")
        if not self._float32(s, scope) or not self._float32(x, scope, input_of_q=True):
            return self._skip(q, "input or scale is not float32")
        y = q.output[0]
        idx = scope.index
        if y in idx.graph_outputs:
            return self._skip(q, f"its output {y!r} is a graph output")
        readers = idx.consumers.get(y, [])
        if not readers:
            return self._skip(q, "no DequantizeLinear reads it")
        scale = scope.constant(s)
        per_axis = scale is None or scale.size != 1
        for dq in readers:
            if dq.op_type != _DQ or dq.domain not in ("", "ai.onnx") or list(dq.input[:1]) != [y] \
                    or y in dq.input[1:]:
                return self._skip(q, f"its output is read by {dq.op_type} {dq.name!r}")
            if _attr(dq, "block_size", 0) or _attr(dq, "output_dtype", 0) not in (0, TensorProto.FLOAT):
                return self._skip(q, f"{dq.name!r} is blocked or does not output float32")
            s2 = dq.input[1]
            if s2 != s:
                other = scope.constant(s2)
                if scale is None or other is None or other.dtype != scale.dtype \
                        or other.shape != scale.shape or not np.array_equal(other, scale, equal_nan=True):
                    return self._skip(q, f"{dq.name!r} has another scale")
            zp2 = dq.input[2] if len(dq.input) > 2 else ""
            why = self._zero_point_fits(zp2, fmt, scope, required=len(q.input) > 2 and bool(q.input[2]), scale=s2)
            if why:
                return self._skip(q, f"{dq.name!r}: {why}")
            if per_axis and _attr(dq, "axis", 1) != _attr(q, "axis", 1):
                return self._skip(q, f"{dq.name!r} has another axis")
        fq = ops.make_fake_quant_node(x, s, readers[0].output[0], format=fmt.name, axis=_attr(q, "axis", 1),
                                      saturate=int(_attr(q, "saturate", 1)), name=names.node(f"{x}_fq"))
        fq.doc_string = _doc(q, "QuantizeLinear -> DequantizeLinear")
        new = {id(q): [fq]}
        for dq in readers:
            new[id(dq)] = []
        for dq in readers[1:]:  # same values: aliases, so every name and graph output stays
            alias = helper.make_node("Identity", [readers[0].output[0]], [dq.output[0]],
                                     name=names.node(f"{dq.output[0]}_alias"))
            new[id(dq)] = [alias]
        return new

    # -- weights: DQ of an FP8 initializer --------------------------------------------
    def _weight(self, dq: onnx.NodeProto, scope: _Scope, graph: onnx.GraphProto, names: G.NameAllocator):
        codes = dq.input[0]
        idx = scope.index
        t = idx.initializers.get(codes)
        if t is None or not idx.is_constant(codes):
            if codes not in scope.defined and fp8_format_of(scope.elem_type(codes)) is not None:
                self._skip(dq, "its FP8 weight is an initializer of an enclosing graph")
            return None  # else an activation's DQ, handled with its Q
        fmt = fp8_format_of(t.data_type)
        if fmt is None:
            return self._skip(dq, "not an FP8 initializer (INT8/UINT8 stays native)")
        if _attr(dq, "block_size", 0) or _attr(dq, "output_dtype", 0) not in (0, TensorProto.FLOAT):
            return self._skip(dq, "blocked or not float32 output")
        if not self._float32(dq.input[1], scope):
            return self._skip(dq, "scale is not float32")
        zp = dq.input[2] if len(dq.input) > 2 else ""
        why = self._zero_point_fits(zp, fmt, scope, required=False, scale=dq.input[1])
        if why:
            return self._skip(dq, why)
        u8 = self._u8.get(codes)
        if u8 is None:  # one uint8 copy per weight, however many DQs read it
            u8 = self._u8[codes] = names.tensor(f"{codes}_u8")
            arr = onnx.numpy_helper.to_array(t)
            graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(arr).view(np.uint8), u8))
        node = ops.make_dequantize_node(u8, dq.input[1], dq.output[0], format=fmt.name,
                                        axis=_attr(dq, "axis", 1), name=dq.name or names.node(f"{codes}_dq"))
        node.doc_string = _doc(dq, "DequantizeLinear")
        return node

    # -- conditions -------------------------------------------------------------------
    def _q_format(self, q: onnx.NodeProto, scope: _Scope):
        zp = q.input[2] if len(q.input) > 2 else ""
        if zp:
            fmt = fp8_format_of(scope.elem_type(zp))
            if fmt is None:
                return None, "zero point is not an FP8 type (INT8/UINT8 stays native)"
            why = self._zero_point_fits(zp, fmt, scope, required=True, scale=q.input[1])
            return (None, why) if why else (fmt, "")
        fmt = fp8_format_of(_attr(q, "output_dtype", 0))
        return (fmt, "") if fmt else (None, "output type is not FP8 (INT8/UINT8 stays native)")

    def _zero_point_fits(self, zp: str, fmt, scope: _Scope, required: bool, scale: str = "") -> str:
        """'' when ``zp`` is absent (and not required) or a constant 0 of ``fmt``'s type,
        with one element per scale element (onnxruntime refuses other shapes)."""
        if not zp:
            return "the Q has a zero point and the DQ has none" if required else ""
        if scope.elem_type(zp) != fmt.onnx_type:
            return "zero point type differs"
        value = scope.constant(zp)
        if value is None:
            return "zero point is not constant"
        if np.any(np.ascontiguousarray(value).view(np.uint8) != 0):
            return "zero point is not 0"
        s = scope.constant(scale) if scale else None
        if s is not None and value.size != s.size:
            return "zero point and scale have different sizes"
        return ""

    def _float32(self, name: str, scope: _Scope, input_of_q: bool = False) -> bool:
        t = scope.elem_type(name)
        if t is None and input_of_q and self._opset < 21:
            return True  # before opset 21 x and its scale share one type, checked on the scale
        return t == TensorProto.FLOAT

    def _skip(self, node: onnx.NodeProto, why: str) -> None:
        self.skipped.append((node.name, why))
        log.debug("emulate_qdq: %s %r stays native: %s", node.op_type, node.name, why)

    def _describe_outputs(self, graph: onnx.GraphProto, scope: _Scope, nodes) -> None:
        """Records each new FakeQuant's and Dequantize's output type and shape in value_info.

        Why: the custom ops' own shape inference gives nothing for a shape with an unnamed
        unknown dim (``[?, 200]``), where onnxruntime's DequantizeLinear gives ``[?, 200]``;
        without a rank onnxruntime skips fusions such as MatMul+Add -> Gemm, which it does
        on the native model, and the sums' bits differ (PP-OCR cls: 22 of 64 samples).
        """
        idx = scope.index
        known = {v.name for v in graph.value_info} | idx.graph_outputs | idx.all_inputs
        dims_of = {t.name: list(t.dims) for t in graph.initializer}
        for node in nodes:
            if node.domain != ops.DOMAIN or node.output[0] in known:
                continue
            if node.op_type == ops.DEQUANTIZE:
                vi = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, dims_of[node.input[0]])
            else:
                src = self._value_info(node.input[0], scope)
                if src is None or not src.type.HasField("tensor_type"):
                    continue
                vi = onnx.ValueInfoProto()
                vi.CopyFrom(src)
                vi.name, vi.doc_string = node.output[0], ""
                for d in vi.type.tensor_type.shape.dim:
                    if d.HasField("dim_value") and d.dim_value < 0:
                        d.Clear()  # an unknown dim some tools write as -1
            graph.value_info.append(vi)
            known.add(node.output[0])

    def _value_info(self, name: str, scope: _Scope):
        while scope is not None:
            if name in scope.index.value_info:
                return scope.index.value_info[name]
            if name in scope.defined:
                return None
            scope = scope.parent
        return None

    def _drop_value_info(self, graph: onnx.GraphProto) -> None:
        """Removes value_info entries of tensors no node, input or initializer defines."""
        defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
        defined.update(o for n in graph.node for o in n.output)
        kept = [v for v in graph.value_info if v.name in defined]
        if len(kept) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(kept)


def _doc(node: onnx.NodeProto, what: str) -> str:
    note = f"fp8onnx: emulates the native {what} ({node.name or node.output[0]}) bit for bit"
    return f"{node.doc_string}\n{note}" if node.doc_string else note
