"""Building Q/DQ nodes and FP8 initializers, in the two emission styles.

- ``qdq``: ONNX QuantizeLinear/DequantizeLinear with the FP8 (or INT8) element types,
  which onnxruntime and TensorRT run. Weights are stored as FP8 initializers behind a
  per-channel DequantizeLinear, so the file shrinks about 4x.
- ``emulate``: the ``ai.fp8onnx`` custom ops, for formats ONNX has no type for (E3M4) or
  for speed on the CPU: weights as uint8 codes behind ``Dequantize``, activations
  through one fused ``FakeQuant``.

Every builder returns a :class:`Built` (nodes, initializers, output tensor name) and
never touches a graph; :mod:`fp8onnx.passes.insert_qdq` places them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import formats as _formats
from . import kernels
from .graph import NameAllocator
from .runtime import ops

__all__ = ["Built", "emits_native", "weight_scales", "WEIGHT_CALIB_METHODS", "MSE_RATIOS", "build_weight", "build_activation",
           "build_activation_dynamic", "zero_point"]


@dataclass
class Built:
    output: str
    nodes: List[onnx.NodeProto] = field(default_factory=list)
    initializers: List[onnx.TensorProto] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def emits_native(fmt: _formats.Format, emit: str) -> bool:
    """Whether ``fmt`` is emitted as ONNX Q/DQ (True) or as fp8onnx custom ops (False)."""
    if emit == "emulate":
        return False
    if fmt.onnx_type is None:
        if emit == "qdq":
            raise ValueError(f"format {fmt.name} has no ONNX type: use --emit auto or emulate")
        return False
    return True


def _fmt_short(x: float) -> str:
    return f"{x:.6g}"


#: Weight range methods (recipe ``weight_calib_method``).
WEIGHT_CALIB_METHODS = ("max", "mse")  # the same tuple as fp8onnx.recipe's
#: Clipping ratios ``t / amax`` that "mse" tries per channel; 1.0 (max scaling) included.
MSE_RATIOS = np.linspace(0.5, 1.0, 51)


def pow2_ceil(scale) -> np.ndarray:
    """The smallest power of two >= each positive float32 ``scale`` (exact, elementwise).

    Hardware-aligned scales (``--pow2-scales``): FP8 units that take the scale as an
    exponent bias (Intel Gaudi) need powers of two. Rounding up never clips more than the
    exact scale does; it gives up at most one binade of range at the top.
    """
    s = np.asarray(scale, dtype=np.float32)
    m, e = np.frexp(s)  # s = m * 2**e with m in [0.5, 1): m == 0.5 is a power of two already
    return np.ldexp(np.float32(1.0), e - (m == np.float32(0.5))).astype(np.float32)


def scale_of(fmt: _formats.Format, amax, pow2: bool = False) -> np.ndarray:
    """``fmt.scale_for(amax)`` made safe (never 0, NaN or Inf), then rounded up to a power
    of two when ``pow2``."""
    scale = _safe_scale(fmt.scale_for(amax))
    return pow2_ceil(scale) if pow2 else scale


def weight_scales(w: np.ndarray, fmt: _formats.Format, axis: int, method: str = "max",
                  pow2: bool = False):
    """Per-channel (threshold, scale) of a weight; all-zero channels get scale 1, never 0.

    ``max``: threshold = amax of the channel (the paper's max scaling). ``mse``: for each
    ratio r in :data:`MSE_RATIOS` the whole weight is fake-quantized (saturating) with
    scale ``fmt.scale_for(r * amax_c)`` per channel, and each channel keeps the threshold
    with the lowest sum of squared error on the format's grid; ties keep the larger r,
    so a channel where max scaling is as good keeps it. The threshold returned is the
    chosen ``r * amax_c`` (``amax_c`` itself for max), so reports show the range used.
    ``pow2``: every scale is rounded up to a power of two (:func:`pow2_ceil`); "mse" then
    scores each threshold as clipping there and quantizing with that rounded scale.
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    amax = np.asarray(kernels.amax(w, axis=axis), dtype=np.float32)
    if method == "max":
        return amax, scale_of(fmt, amax, pow2)
    if method != "mse":
        raise ValueError(f"unknown weight calibration method {method!r}: choose one of "
                         f"{', '.join(WEIGHT_CALIB_METHODS)}")
    ax = axis % w.ndim
    rest = tuple(i for i in range(w.ndim) if i != ax)
    bshape = [1] * w.ndim
    bshape[ax] = -1
    w64 = w.astype(np.float64)
    best_t, best_err = amax.copy(), None
    # Largest ratio first, and a later candidate must be strictly better: ties keep the larger r.
    for r in MSE_RATIOS[::-1]:
        t = (amax.astype(np.float64) * r).astype(np.float32)
        scale = scale_of(fmt, t, pow2)
        # With pow2 the scale's range reaches past t: the clip at t is what the FP8 model holds.
        wc = np.clip(w, -t.reshape(bshape), t.reshape(bshape)) if pow2 else w
        err = ((fmt.fake_quant(wc, scale, axis=ax, saturate=True) - w64) ** 2).sum(axis=rest)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_t = np.where(better, t, best_t)
        best_err = np.where(better, err, best_err)
    return best_t.astype(np.float32), scale_of(fmt, best_t, pow2)


def _safe_scale(scale) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    return np.where((scale > 0) & np.isfinite(scale), scale, np.float32(1.0)).astype(np.float32)


def zero_point(fmt: _formats.Format, name: str) -> onnx.TensorProto:
    """A scalar zero point whose element type tells QuantizeLinear the output type."""
    t = TensorProto()
    t.name = name
    t.data_type = fmt.onnx_type
    t.raw_data = b"\x00"
    return t


def _codes_tensor(name, codes: np.ndarray, data_type: int) -> onnx.TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(codes.shape)
    t.raw_data = np.ascontiguousarray(codes).view(np.uint8).tobytes()
    return t


def build_weight(names: NameAllocator, tensor: str, w: np.ndarray, fmt: _formats.Format,
                 axis: int, emit: str, saturate: bool = True, pow2: bool = False) -> Built:
    """``W -> DQ(Wq, scale[axis])``: codes stored per output channel."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    amax, scale = weight_scales(w, fmt, axis, pow2=pow2)
    codes = fmt.quantize(w, scale, axis=axis, saturate=saturate)
    native = emits_native(fmt, emit)
    q_name = names.tensor(f"{tensor}_{fmt.name}")
    s_name = names.tensor(f"{tensor}_scale")
    out = names.tensor(f"{tensor}_dq")
    node_name = names.node(f"{tensor}_dq")
    doc = (f"fp8onnx: weight {tensor!r} per-channel {fmt.name} on axis {axis}; "
           f"amax max {_fmt_short(float(amax.max()))}, scale range "
           f"[{_fmt_short(float(scale.min()))}, {_fmt_short(float(scale.max()))}]")
    inits = [
        _codes_tensor(q_name, codes, fmt.onnx_type if native else TensorProto.UINT8),
        onnx.numpy_helper.from_array(scale, s_name),
    ]
    if native:
        node = helper.make_node("DequantizeLinear", [q_name, s_name], [out], name=node_name, axis=axis)
    else:
        node = ops.make_dequantize_node(q_name, s_name, out, format=fmt.name, axis=axis, name=node_name)
    node.doc_string = doc
    return Built(out, [node], inits, {"amax": float(amax.max()), "channels": int(scale.size),
                                      "axis": axis, "native": native})


def build_activation(names: NameAllocator, tensor: str, fmt: _formats.Format, amax: float, emit: str,
                     zp_name: str, saturate: bool = True, pow2: bool = False) -> Built:
    """``x -> DQ(Q(x, scale))`` per tensor, or one fused FakeQuant when emulating."""
    scale = scale_of(fmt, np.float32(amax), pow2).reshape(())
    native = emits_native(fmt, emit)
    s_name = names.tensor(f"{tensor}_scale")
    doc = f"fp8onnx: activation {tensor!r} per-tensor {fmt.name}; amax {_fmt_short(amax)}, scale {_fmt_short(float(scale))}"
    inits = [onnx.numpy_helper.from_array(scale, s_name)]
    nodes, out = _quantize_nodes(names, tensor, s_name, fmt, native, zp_name, saturate)
    for n in nodes:
        n.doc_string = doc
    return Built(out, nodes, inits, {"amax": float(amax), "scale": float(scale), "native": native})


def build_activation_dynamic(names: NameAllocator, tensor: str, fmt: _formats.Format, emit: str,
                             zp_name: str, saturate: bool = True, pow2: bool = False) -> Built:
    """``x -> DQ(Q(x, s))`` with ``s = max(ReduceMax(|x|) / fmt.max, tiny)`` computed at run time.

    Standard ONNX ops compute the scale, so no calibration is needed; the floor keeps an
    all-zero tensor from producing a zero scale. ``pow2``: ``s = 2 ** ceil(log2(s) - 2**-20)``
    (ONNX has no bit casts; the 2**-20 keeps an exact power of two from doubling through
    Log's rounding, at the cost of clipping values within 1e-6 of the amax).
    """
    native = emits_native(fmt, emit)
    fmax = names.tensor(f"{tensor}_fmt_max")
    tiny = names.tensor(f"{tensor}_scale_floor")
    absx, amax, raw, scale = (names.tensor(f"{tensor}_{k}") for k in ("abs", "amax", "scale_raw", "scale"))
    doc = f"fp8onnx: activation {tensor!r} per-tensor {fmt.name}, dynamic: scale = amax(|x|) / {fmt.max:g} at run time"
    inits = [onnx.numpy_helper.from_array(np.array(fmt.max, np.float32), fmax),
             onnx.numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, np.float32), tiny)]
    nodes = [
        helper.make_node("Abs", [tensor], [absx], name=names.node(f"{tensor}_abs")),
        helper.make_node("ReduceMax", [absx], [amax], name=names.node(f"{tensor}_amax"), keepdims=0),
        helper.make_node("Div", [amax, fmax], [raw], name=names.node(f"{tensor}_scale_raw")),
        helper.make_node("Max", [raw, tiny], [scale], name=names.node(f"{tensor}_scale")),
    ]
    if pow2:
        exact = scale
        consts = {k: names.tensor(f"{tensor}_{k}") for k in ("inv_ln2", "pow2_slack", "two")}
        inits += [onnx.numpy_helper.from_array(np.array(v, np.float32), consts[k]) for k, v in
                  (("inv_ln2", 1 / np.log(2)), ("pow2_slack", 2.0 ** -20), ("two", 2.0))]
        log, log2, lowered, expo, scale = (names.tensor(f"{tensor}_{k}") for k in
                                           ("scale_ln", "scale_log2", "scale_log2_low", "scale_exp", "scale_pow2"))
        nodes += [
            helper.make_node("Log", [exact], [log], name=names.node(f"{tensor}_scale_ln")),
            helper.make_node("Mul", [log, consts["inv_ln2"]], [log2], name=names.node(f"{tensor}_scale_log2")),
            helper.make_node("Sub", [log2, consts["pow2_slack"]], [lowered], name=names.node(f"{tensor}_scale_log2_low")),
            helper.make_node("Ceil", [lowered], [expo], name=names.node(f"{tensor}_scale_exp")),
            helper.make_node("Pow", [consts["two"], expo], [scale], name=names.node(f"{tensor}_scale_pow2")),
        ]
        doc += ", rounded up to a power of two"
    q_nodes, out = _quantize_nodes(names, tensor, scale, fmt, native, zp_name, saturate)
    nodes += q_nodes
    for n in nodes:
        n.doc_string = doc
    return Built(out, nodes, inits, {"dynamic": True, "native": native})


def _quantize_nodes(names: NameAllocator, tensor: str, scale: str, fmt: _formats.Format, native: bool,
                    zp_name: str, saturate: bool):
    """(nodes, output) of ``DQ(Q(tensor, scale))``, or of one FakeQuant when not native."""
    if native:
        q_out, dq_out = names.tensor(f"{tensor}_q"), names.tensor(f"{tensor}_dq")
        q_attrs = {"saturate": int(saturate)} if fmt.is_float else {}
        q = helper.make_node("QuantizeLinear", [tensor, scale, zp_name], [q_out],
                             name=names.node(f"{tensor}_q"), **q_attrs)
        dq = helper.make_node("DequantizeLinear", [q_out, scale, zp_name], [dq_out],
                              name=names.node(f"{tensor}_dq"))
        return [q, dq], dq_out
    out = names.tensor(f"{tensor}_fq")
    return [ops.make_fake_quant_node(tensor, scale, out, format=fmt.name, saturate=saturate,
                                     name=names.node(f"{tensor}_fq"))], out
