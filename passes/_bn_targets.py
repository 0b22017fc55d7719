"""The layers BatchNormCalibration corrects, and the correction computed from measured moments.

:func:`find_targets` picks the planned Conv/ConvTranspose units it may touch (with the
reason for each one it may not); :func:`correct` turns a layer's float and FP8-weight
channel moments into new parameters, ``a_c = std_f / std_q`` and a bias for folded BN,
moved statistics for kept BN (see :mod:`fp8onnx.passes.bn_calibrate`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fp8onnx import formats as _formats
from fp8onnx import qdq
from fp8onnx.graph import GraphIndex

__all__ = ["Target", "find_targets", "correct", "fake_quant_weight", "bn_eps", "read_marker", "MARKER", "EPS"]

log = logging.getLogger("fp8onnx.passes")

EPS = 1e-12
#: metadata_props key listing the layers corrected relative to the float model they had.
MARKER = "fp8onnx.bn_calibration"


def fake_quant_weight(w: np.ndarray, fmt, axis: int, pow2: bool = False) -> np.ndarray:
    """``DQ(Q(w))`` with per-channel max scaling on ``axis`` (scales rounded up to powers
    of two if ``pow2``): what InsertQDQ stores, in float32."""
    fmt = _formats.get(fmt) if isinstance(fmt, str) else fmt
    w = np.ascontiguousarray(w, dtype=np.float32)
    _, scale = qdq.weight_scales(w, fmt, axis, pow2=pow2)
    return fmt.fake_quant(w, scale, axis=axis)


@dataclass
class Target:
    """One layer to correct and its parameters as they move."""

    node: onnx.NodeProto
    kind: str                      # "bn-stats" or "folded"
    fmt: object
    axis: int                      # weight channel axis
    weight: str
    bias: Optional[str]            # the Conv's bias initializer (None: none yet)
    out: str                       # where statistics are measured: the Conv output, or the
                                   # kept BN's input (a Relu between them)
    channels: int
    w0: np.ndarray
    b0: np.ndarray
    bn: Optional[onnx.NodeProto] = None
    bias_name: str = ""            # input name of the bias in the measuring model
    a: np.ndarray = None           # cumulative channel scale (folded)
    b: np.ndarray = None           # current bias (folded)
    mean0: np.ndarray = None       # BN's original statistics (bn-stats)
    var0: np.ndarray = None
    mean: np.ndarray = None        # current BN statistics (bn-stats)
    var: np.ndarray = None
    gamma: np.ndarray = None       # BN's scale and shift (bn-stats), for the BN output's error
    beta: np.ndarray = None
    std_f: np.ndarray = None       # float model's channel std (folded)
    clamped: int = 0
    report: dict = field(default_factory=dict)
    pow2: bool = False             # weight scales rounded up to powers of two (--pow2-scales)

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        """``w`` as InsertQDQ will store this layer's weight."""
        return fake_quant_weight(w, self.fmt, self.axis, self.pow2)

    @property
    def reported(self) -> str:
        """The tensor whose error vs float is reported: the BN output where BN is kept."""
        return self.bn.output[0] if self.bn is not None else self.out

    def weight_now(self) -> np.ndarray:
        if self.a is None:
            return self.w0
        shape = [1] * self.w0.ndim
        shape[self.axis] = -1
        return (self.w0 * self.a.reshape(shape)).astype(np.float32)

    def bn_affine(self, mean, var) -> Tuple[np.ndarray, np.ndarray]:
        """The kept BN as ``g * x + h`` per channel, with statistics ``mean``, ``var``."""
        g = self.gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + bn_eps(self.bn))
        return g, self.beta.astype(np.float64) - g * mean


def read_marker(model) -> dict:
    """The layers an earlier run corrected (metadata MARKER), by node name."""
    for prop in model.metadata_props:
        if prop.key == MARKER:
            try:
                return dict(json.loads(prop.value))
            except ValueError:
                return {}
    return {}


def bn_eps(bn) -> float:
    return next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)


def find_targets(model, plan, *, bn_mode: str, pow2: bool = False) -> Tuple[List[Target], List[tuple]]:
    """The plan's main-graph Conv/ConvTranspose units that can be corrected, in graph order,
    and (node, reason) for the others."""
    graph = model.graph
    index = GraphIndex(graph)
    by_name = {n.name: n for n in graph.node}
    position = {n.name: i for i, n in enumerate(graph.node)}
    done = read_marker(model)
    targets, skipped = [], []
    for d in plan.units:
        if d.graph_path != "main" or d.op_type not in ("Conv", "ConvTranspose") or not d.weight_uses:
            continue
        node = by_name.get(d.node)
        use = d.weight_uses[0]
        reason = _unfit(node, use, index)
        if not reason:
            w0 = numpy_helper.to_array(index.initializers[use.tensor]).astype(np.float32)
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            channels = w0.shape[0] if node.op_type == "Conv" else w0.shape[1] * group
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            bn, bn_input = _bn_after(node, index)
            if bn is None and bias is None and not _bias_add_after(node, channels, w0.ndim, index):
                reason = NO_FOLDED_BN
        if reason:
            skipped.append((d.node, reason))
            log.info("bn calibration: %s skipped: %s", d.node, reason)
            continue
        b0 = (numpy_helper.to_array(index.initializers[bias]).astype(np.float32) if bias
              else np.zeros(channels, np.float32))
        t = Target(node, "folded", _formats.get(d.weight_format), use.axis, use.tensor, bias,
                   node.output[0], channels, w0, b0, pow2=pow2)
        if bn is not None:
            t.kind, t.bn, t.out = "bn-stats", bn, bn_input
            arr = [numpy_helper.to_array(index.initializers[n]).astype(np.float32) for n in bn.input[1:5]]
            t.gamma, t.beta, t.mean0, t.var0 = arr
            t.mean, t.var = t.mean0.copy(), t.var0.copy()
        else:
            t.a, t.b = np.ones(channels, np.float32), b0.copy()
        if d.node in done and not (t.kind == "bn-stats" and bn_mode == "reestimate"):
            # Its float weights already carry a correction: measuring it against them
            # again would apply the correction twice.
            skipped.append((d.node, f"already corrected (metadata {MARKER})"))
            continue
        targets.append(t)
    # Graph order: a layer is measured after every layer above it (the staged run needs it).
    targets.sort(key=lambda t: position[t.node.name])
    return targets, skipped


def _unfit(node, use, index) -> Optional[str]:
    if node is None or use.index != 1 or node.input[1] != use.tensor:
        return "the plan does not match the model (planned on another copy?)"
    if not index.is_constant(use.tensor) or use.tensor not in index.initializers:
        return "weight is not an initializer"
    if index.initializers[use.tensor].data_type != TensorProto.FLOAT:
        return "weight is not float32"
    if len(index.consumers[use.tensor]) != 1:
        return "weight is shared by several nodes: correcting it would change the others"
    if node.op_type == "ConvTranspose" and any(a.name == "group" and a.i != 1 for a in node.attribute):
        return "grouped ConvTranspose: its weight channels are not its output channels"
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias and (bias not in index.initializers or len(index.consumers[bias]) != 1
                 or index.initializers[bias].data_type != TensorProto.FLOAT):
        return "bias is not a float32 initializer of this node alone"
    if node.output[0] in index.graph_outputs:
        return "its output is a graph output"
    return None


#: Why a Conv with no bias and no BatchNorm after it is not corrected. Folding a
#: BatchNorm always leaves a per-channel shift, as a bias input or an Add after the Conv
#: (Paddle's export); without either the Conv is a plain linear map, such as DNSMOS's
#: STFT as two DFT Convs, where a per-channel shift that lowers the output's squared error
#: moved the quiet bins' log power by orders of magnitude (its BN-calibrated E4M3 model
#: ranked 0.26 of pairs, against 0.925 without: every score wrong).
NO_FOLDED_BN = "no bias, and no per-channel Add after it: no BatchNorm was folded into it"


def _bias_add_after(node, channels: int, rank: int, index) -> bool:
    """Does an Add of a per-channel constant alone read ``node``'s output (a folded
    BatchNorm's shift kept outside the Conv)? Per-channel: right-aligned against the
    rank-``rank`` output, the constant is ``channels`` at axis 1 and 1 elsewhere."""
    readers = index.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add" or len(readers[0].input) != 2:
        return False
    other = [n for n in readers[0].input if n != node.output[0]]
    c = index.constant(other[0]) if len(other) == 1 and index.is_constant(other[0]) else None
    if c is None or c.ndim > rank or c.ndim < rank - 1:
        return False
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    return shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1)


def _bn_after(node, index) -> Tuple[Optional[onnx.NodeProto], Optional[str]]:
    """(the inference-mode BatchNormalization that alone reads ``node``'s output, the
    tensor it reads), if its scale, shift, mean and variance are float32 initializers
    (mean and variance its own); (None, None) otherwise. A Relu alone between them is
    looked through (CREPE normalizes after the activation): the BN's statistics are then
    those of the Relu's output, which is where they are measured."""
    out = node.output[0]
    readers = index.consumers.get(out, [])
    if (len(readers) == 1 and readers[0].op_type == "Relu" and readers[0].domain in ("", "ai.onnx")
            and readers[0].output[0] not in index.graph_outputs):
        out = readers[0].output[0]
        readers = index.consumers.get(out, [])
    if len(readers) != 1 or readers[0].op_type != "BatchNormalization":
        return None, None
    bn = readers[0]
    if bn.input[0] != out or len(bn.input) < 5 or len(bn.output) != 1:
        return None, None  # training-mode BN (running outputs) is left alone
    for k, name in enumerate(bn.input[1:5], start=1):
        if (name not in index.initializers or index.initializers[name].data_type != TensorProto.FLOAT
                or (k >= 3 and len(index.consumers[name]) != 1)):
            return None, None
    return bn, out


def correct(t: Target, f_mean, f_var, q_mean, q_var, *, bn_mode: str, clamp, tol: float) -> bool:
    """Apply one correction from measured channel moments (float model ``f``, FP8 weights
    ``q``); True when a parameter moved by more than ``tol``."""
    if t.kind == "bn-stats":
        if bn_mode == "reestimate":
            mean, var = q_mean, q_var
        else:  # match: keep the training statistics, move them by what FP8 weights shift
            ok = (q_var > EPS) & (f_var > EPS)
            r = np.clip(np.sqrt(np.where(ok, q_var, 1.0) / np.where(ok, f_var, 1.0)), *clamp)
            eps = bn_eps(t.bn)
            mean = q_mean - (f_mean - t.mean0) * r
            var = np.maximum((t.var0 + eps) * r * r - eps, 0.0)
        mean, var = mean.astype(np.float32), var.astype(np.float32)
        std = np.sqrt(np.maximum(t.var, EPS))
        moved = (np.max(np.abs(mean - t.mean) / std) > tol
                 or np.max(np.abs(var - t.var) / np.maximum(t.var, EPS)) > 2 * tol)
        t.mean, t.var = mean, var
        return bool(moved)
    lo, hi = clamp
    std_f, std_q = np.sqrt(f_var), np.sqrt(q_var)
    scale_ref = np.maximum(np.abs(q_mean), std_f) + EPS
    ok = (std_q > 1e-6 * scale_ref) & (std_f > 1e-6 * scale_ref)
    step = np.where(ok, std_f / np.where(ok, std_q, 1.0), 1.0)
    wanted = t.a.astype(np.float64) * step
    a_new = np.clip(wanted, lo, hi)
    clamped = int(np.sum(a_new != wanted))
    if clamped:
        t.clamped = max(t.clamped, clamped)
        log.info("bn calibration: %s: a_c clamped to [%g, %g] on %d of %d channels",
                 t.node.name, lo, hi, clamped, t.channels)
    eff = a_new / t.a
    b_new = eff * t.b + (f_mean - eff * q_mean)
    moved = (np.max(np.abs(eff - 1)) > tol
             or np.max(np.abs(b_new - t.b) / np.maximum(std_f, EPS)) > tol)
    t.a, t.b = a_new.astype(np.float32), b_new.astype(np.float32)
    return bool(moved)
