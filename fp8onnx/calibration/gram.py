"""The Gram matrix ``X^T X`` of each weighted layer's input, over the calibration data.

Error-compensating weight rounding (:mod:`fp8onnx.calibration.gptq`) needs, per weight,
how the layer's inputs correlate: the output error of a rounded weight row ``e`` is
``e^T (X^T X) e`` summed over the calibration inputs ``X``. Here ``X`` is what the weight
multiplies: the rows of a Gemm's or MatMul's input, or for a Conv the input patches it
slides over (im2col), one matrix per group (a depthwise Conv has one 9x9 matrix per
channel for 3x3 kernels).

Memory: one float64 ``K x K`` matrix per group (K = inputs per output: C/g * kernel size
for a Conv), never the activations of more than one feed. The layers are split into groups
whose matrices fit ``max_bytes``; each group reads the source once (as activation
statistics do with ``max_bytes_per_run``). Very large inputs are subsampled at a regular
stride to at most ``max_rows`` patch rows per feed (fewer for wide layers, see
:data:`ROW_FLOPS`), which bounds the cost of each feed's ``X^T X`` product; layers with
more than :data:`MAX_INPUTS` inputs per output get no layer.

Layer orientation (the weight as rows = output channels, columns = inputs, in the order
the patches' columns follow) is :func:`weight_rows`; what cannot be oriented that way
(ConvTranspose, batched MatMul weights, a weight that is the first MatMul input) gets no
layer and keeps plain rounding.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper

from .collect import _run, _session
from .data import CalibrationSource, open_source

__all__ = ["GramLayer", "layer_for", "patches", "weight_rows", "from_rows", "collect_grams",
           "inputs_per_output", "rows_per_feed", "MAX_INPUTS"]

#: Patch rows per feed and layer above which rows are taken at a regular stride.
MAX_ROWS = 16384
#: ... and fewer for wide layers: about this many multiply-adds per feed for a layer's
#: X^T X (rows x K^2), but never under MIN_ROWS rows.
ROW_FLOPS = 5e8
MIN_ROWS = 256
#: Inputs per output (K) above which a weight keeps nearest rounding: its K x K matrix
#: and its inversion cost more than the rounding is worth (4608 = a 3x3 Conv over 512
#: channels; CREPE's 64-tap Convs over 128 channels have 8192).
MAX_INPUTS = 4608
#: Bytes of Gram matrices held at once (float64); more layers mean more passes.
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class GramLayer:
    """One weighted node as a matrix product: ``weight`` (rows = output channels) times
    patches of ``input``."""

    weight: str
    node: str
    op_type: str
    input: str
    groups: int
    kernel: Tuple[int, ...] = ()
    strides: Tuple[int, ...] = ()
    dilations: Tuple[int, ...] = ()
    pads: Tuple[int, ...] = ()      # begins then ends, as ONNX; empty: from auto_pad
    auto_pad: str = "NOTSET"
    transposed: bool = False        # the weight is stored [K, N]: rows are its columns


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def layer_for(node: onnx.NodeProto, weight_shape: Tuple[int, ...], axis: int) -> Optional[GramLayer]:
    """The :class:`GramLayer` of ``node`` whose ``input[1]`` is a weight of ``weight_shape``
    quantized per channel along ``axis``; None when its rows cannot be the output channels."""
    a = _attrs(node)
    rank = len(weight_shape)
    if node.op_type == "Conv" and rank >= 3 and axis == 0 and len(node.input) > 1:
        spatial = rank - 2
        pads = tuple(a.get("pads", ()))
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto == "NOTSET" and not pads:
            pads = (0,) * (2 * spatial)
        if auto == "VALID":
            auto, pads = "NOTSET", (0,) * (2 * spatial)
        return GramLayer(node.input[1], node.name, "Conv", node.input[0], int(a.get("group", 1)),
                         tuple(int(k) for k in weight_shape[2:]),
                         tuple(int(s) for s in a.get("strides", (1,) * spatial)),
                         tuple(int(d) for d in a.get("dilations", (1,) * spatial)),
                         tuple(int(p) for p in pads), auto)
    if node.op_type == "Gemm" and rank == 2 and not a.get("transA", 0):
        trans_b = bool(a.get("transB", 0))
        # rows are the N outputs: axis 0 of a [N, K] weight, axis 1 of a [K, N] one
        if axis == (0 if trans_b else 1):
            return GramLayer(node.input[1], node.name, "Gemm", node.input[0], 1, transposed=not trans_b)
    if node.op_type == "MatMul" and rank == 2 and axis == 1:
        return GramLayer(node.input[1], node.name, "MatMul", node.input[0], 1, transposed=True)
    return None


def weight_rows(w: np.ndarray, layer: GramLayer) -> np.ndarray:
    """The weight as a [rows, K] matrix whose columns follow :func:`patches`' columns."""
    if layer.transposed:
        return np.ascontiguousarray(w.T)
    return np.ascontiguousarray(w.reshape(w.shape[0], -1))


def from_rows(rows: np.ndarray, like: np.ndarray, layer: GramLayer) -> np.ndarray:
    """Inverse of :func:`weight_rows`."""
    if layer.transposed:
        return np.ascontiguousarray(rows.T)
    return rows.reshape(like.shape)


def _pads(layer: GramLayer, size: Tuple[int, ...]) -> Tuple[List[int], List[int]]:
    n = len(layer.kernel)
    if layer.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            out = math.ceil(size[i] / layer.strides[i])
            total = max(0, (out - 1) * layer.strides[i] + (layer.kernel[i] - 1) * layer.dilations[i] + 1 - size[i])
            small, large = total // 2, total - total // 2
            b = small if layer.auto_pad == "SAME_UPPER" else large
            begin.append(b)
            end.append(total - b)
        return begin, end
    return list(layer.pads[:n]), list(layer.pads[n:])


def patches(x: np.ndarray, layer: GramLayer, max_rows: int = MAX_ROWS) -> np.ndarray:
    """The [groups, P, K] float32 matrices the layer's weight rows multiply, group by group
    (P rows: batch x output positions, at most about ``max_rows``)."""
    x = np.asarray(x, dtype=np.float32)
    if layer.op_type != "Conv":
        rows = x.reshape(-1, x.shape[-1])
        step = max(1, -(-rows.shape[0] // max_rows))
        return np.ascontiguousarray(rows[::step])[None]
    n = len(layer.kernel)
    begin, end = _pads(layer, x.shape[2:])
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
    outs = tuple((xp.shape[2 + i] - (layer.dilations[i] * (layer.kernel[i] - 1) + 1)) // layer.strides[i] + 1
                 for i in range(n))
    c = x.shape[1] // layer.groups
    positions = x.shape[0] * int(np.prod(outs))
    step = max(1, -(-positions // max_rows))
    # Only the kept positions are gathered (every step-th of the flattened batch x output
    # grid), so a large feature map never costs its full im2col matrix; all groups at once,
    # as a depthwise Conv has hundreds of them.
    where = np.unravel_index(np.arange(0, positions, step), (x.shape[0],) + outs)
    batch, out_pos = where[0], where[1:]
    cols = np.empty((len(batch), layer.groups, c) + layer.kernel, dtype=np.float32)
    for offs in np.ndindex(*layer.kernel):
        at = tuple(o * s + k * d for o, s, k, d in zip(out_pos, layer.strides, offs, layer.dilations))
        cols[(slice(None),) * 3 + offs] = xp[(batch, slice(None)) + at].reshape(len(batch), layer.groups, c)
    return np.ascontiguousarray(cols.reshape(len(batch), layer.groups, -1).transpose(1, 0, 2))


def inputs_per_output(layer: GramLayer, w_shape: Tuple[int, ...]) -> int:
    """K: the length of one weight row (a Conv's C/g x kernel, a Gemm's or MatMul's K)."""
    return int(np.prod(w_shape[1:])) if not layer.transposed else int(w_shape[0])


def rows_per_feed(k: int, max_rows: int = MAX_ROWS) -> int:
    """Patch rows a feed contributes for a layer of K inputs per output."""
    return int(max(MIN_ROWS, min(max_rows, ROW_FLOPS // max(1, k * k))))


def _gram_bytes(layer: GramLayer, w_shape: Tuple[int, ...]) -> int:
    k = inputs_per_output(layer, w_shape)
    return layer.groups * k * k * 8


def collect_grams(model: onnx.ModelProto, layers: Dict[str, Tuple[GramLayer, Tuple[int, ...]]],
                  source: Iterable, *, max_bytes: int = MAX_BYTES, max_rows: int = MAX_ROWS,
                  progress: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """{weight: X^T X per group, [groups, K, K] float64} over every feed of ``source``.

    ``layers``: {weight name: (layer, weight shape)}. The float ``model`` is run with only
    the layers' inputs as outputs; the layers are split into groups of at most
    ``max_bytes`` of matrices, one pass over the source each (one pass in all when the
    source can be read only once).
    """
    src = source if isinstance(source, CalibrationSource) else open_source(source, model)
    order = list(layers)
    groups: List[List[str]] = [[]]
    used = 0
    for w in order:
        b = _gram_bytes(*layers[w])
        if groups[-1] and used + b > max_bytes and src.reiterable:
            groups.append([])
            used = 0
        groups[-1].append(w)
        used += b
    types = {layers[w][0].input: onnx.TensorProto.FLOAT for w in order}
    show = sys.stderr.isatty() if progress is None else bool(progress)
    out: Dict[str, np.ndarray] = {}
    for gi, group in enumerate(g for g in groups if g):
        inputs = list(dict.fromkeys(layers[w][0].input for w in group))
        sess = _session(model, inputs, types, None)
        grams = {w: None for w in group}
        bar = None
        if show:
            from tqdm import tqdm
            bar = tqdm(total=src.num_samples, unit="sample", file=sys.stderr, dynamic_ncols=True,
                       desc="input correlations" if len(groups) == 1 else f"input correlations {gi + 1}/{len(groups)}")
        for k, feed in enumerate(src):
            arrays = dict(zip(inputs, _run(sess, inputs, feed, k)))
            for w in group:
                layer = layers[w][0]
                k_in = inputs_per_output(layer, layers[w][1])
                ps = patches(arrays[layer.input], layer, rows_per_feed(k_in, max_rows))
                g = np.matmul(ps.transpose(0, 2, 1), ps).astype(np.float64)  # per group X^T X
                grams[w] = g if grams[w] is None else grams[w] + g
            del arrays
            if bar is not None:
                bar.update(src.samples_in(feed))
        if bar is not None:
            bar.close()
        out.update({w: g for w, g in grams.items() if g is not None})
    return out
