"""``evaluate(float_model, fp8_model, data)``: how far an FP8 model is from its FP32 source.

Both models run side by side on the same feeds, on copies that also output the tensors
to compare: every model output, and for every quantized activation the float model's
tensor, the FP8 model's tensor before its Q and the dequantized tensor after it (found
through the FP8 model's ``fp8onnx.tensors`` metadata). Weights are compared from the
initializers, without a run. Figures accumulate batch by batch (see :mod:`.stats`).

>>> r = evaluate("models/digits_cnn.onnx", "digits_cnn_fp8.onnx",
...              "models/data/digits_test.npz")              # doctest: +SKIP
>>> r.outputs[0].top1_agreement, r.layers[0].tensor          # doctest: +SKIP
(0.991, 'fc1_relu')
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .. import formats as _formats
from .. import modelio
from ..errors import UserError
from .data import check_formats, check_same_inputs, eval_batches, model_inputs, session_for
from .result import EvalResult, LayerFigures, OutputFidelity
from .stats import HIST_LO, HIST_PER_OCTAVE, ErrorStats, Log2Histogram, sqnr_db

__all__ = ["evaluate", "PerSample", "tensor_map", "weight_figures", "score_outputs", "node_pattern"]

log = logging.getLogger(__name__)


class PerSample:
    """A task metric computed feed by feed, so no outputs are kept.

    ``fn(outputs, targets)`` gets one feed's outputs ({output name: array}) and targets
    (the data's non-input arrays for the same samples) and returns one score per sample
    (a 1-D array) or one score for the feed; the metric is the mean over samples.

    >>> acc = PerSample(lambda out, t: out["logits"].argmax(1) == t["label"])
    >>> acc.reset(); acc.update({"logits": np.eye(3)}, {"label": np.array([0, 1, 0])}); acc.value()
    0.6666666666666666
    """

    def __init__(self, fn: Callable[[dict, dict], object]):
        self.fn = fn
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, outputs: dict, targets: dict) -> None:
        s = np.asarray(self.fn(outputs, targets), dtype=np.float64).ravel()
        self.total += float(s.sum())
        self.count += int(s.size)

    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


class _WholeMetric:
    """A plain ``metric(outputs_list, targets_list) -> float`` over all feeds at once."""

    def __init__(self, fn):
        self.fn, self.outputs, self.targets = fn, [], []

    def reset(self):
        self.outputs, self.targets = [], []

    def update(self, outputs, targets):
        self.outputs.append(outputs)
        self.targets.append(targets)

    def value(self):
        return float(self.fn(self.outputs, self.targets))


def tensor_map(model: onnx.ModelProto) -> dict:
    """The FP8 model's ``fp8onnx.tensors`` map ({} when it was not made by fp8onnx)."""
    for p in model.metadata_props:
        if p.key == "fp8onnx.tensors":
            try:
                return json.loads(p.value)
            except json.JSONDecodeError as e:
                raise UserError(f"the FP8 model's fp8onnx.tensors metadata is not valid JSON ({e}): "
                                "recompile the model") from e
    return {}


def _with_outputs(model: onnx.ModelProto, names: List[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (types kept where known)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    del m.graph.output[:]
    for n in names:
        vi = onnx.ValueInfoProto()
        if n in known and known[n].type.HasField("tensor_type"):
            vi.CopyFrom(known[n])
            vi.type.tensor_type.ClearField("shape")  # shapes may be dynamic: let the runtime infer
        else:
            vi.name = n
        m.graph.output.append(vi)
    return m


def _produced(model: onnx.ModelProto) -> set:
    return {o for n in model.graph.node for o in n.output} | set(model_inputs(model))


def _float_weight(name: str, models) -> Optional[np.ndarray]:
    for m in models:
        for t in m.graph.initializer:
            if t.name == name:
                return numpy_helper.to_array(t).astype(np.float32)
        for n in m.graph.node:
            if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
                return numpy_helper.to_array(n.attribute[0].t).astype(np.float32)
    return None


def _dequantized_weight(qm: onnx.ModelProto, name: str, fmt: _formats.Format):
    """(values, scale, axis) of the weight behind DQ output ``name``, or None."""
    node = next((n for n in qm.graph.node if name in n.output), None)
    if node is None:
        return None
    inits = {t.name: t for t in qm.graph.initializer}
    if node.input[0] not in inits or node.input[1] not in inits:
        return None
    t = inits[node.input[0]]
    codes = np.frombuffer(t.raw_data, np.uint8).reshape(tuple(t.dims)) if t.raw_data else \
        numpy_helper.to_array(t).view(np.uint8)
    if fmt.kind == "int":
        codes = codes.view(np.int8)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.size == 1:
        scale, axis = scale.reshape(()), None
    return fmt.dequantize(np.ascontiguousarray(codes), scale, axis=axis), scale, axis


def weight_figures(layer: LayerFigures, qm: onnx.ModelProto, float_models) -> None:
    """Fill ``layer`` (a weight) from the initializers: SQNR, saturation, underflow, histogram."""
    fmt = _formats.get(layer.format)
    w = _float_weight(layer.tensor, float_models)
    got = _dequantized_weight(qm, layer.name, fmt)
    if w is None or got is None:
        layer.note = "float weight or FP8 codes not found in the main graph: not measured"
        return
    deq, scale, axis = got
    if deq.shape != w.shape:
        layer.note = f"float weight shape {w.shape} differs from the FP8 weight's {deq.shape}: not measured"
        return
    es = ErrorStats()
    es.update(w, deq)
    s = scale if axis is None else scale.reshape([-1 if i == axis % w.ndim else 1 for i in range(w.ndim)])
    ratio = np.abs(w) / s
    layer.sqnr_db = es.sqnr_db
    layer.saturation = float((ratio > fmt.max * SATURATION_SLACK).mean())
    nonzero = w != 0
    layer.underflow = float((nonzero & (deq == 0)).sum() / max(1, nonzero.sum()))
    layer.amax_observed = layer.amax_float = float(np.abs(w).max())
    layer.elements = int(w.size)
    layer.hist = Log2Histogram()
    layer.hist.update(ratio)


#: Slack for "beyond the format's max": |x| / scale is computed in float32, so a value
#: at exactly amax can land an ulp above max without being clipped.
SATURATION_SLACK = 1 + 2.0 ** -16


class _ActivationAcc:
    """Streaming figures of one quantized activation (one fused pass per batch)."""

    def __init__(self, layer: LayerFigures, fmt: _formats.Format):
        self.layer, self.fmt = layer, fmt
        self.hist = Log2Histogram()
        self.sums = np.zeros(12, np.float64)
        self.counts = np.zeros(9, np.int64)
        self.hi = fmt.max * layer.scale * SATURATION_SLACK
        self.lo = fmt.zero_below(layer.scale)

    def update(self, ref, pre, deq) -> None:
        from ._accumulate import activation_pass

        arrays = [np.asarray(a, dtype=np.float32).ravel() for a in (ref, pre, deq)]
        if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
            raise UserError(f"tensor {self.layer.tensor!r} has shape {np.shape(ref)} in the float model but "
                            f"{np.shape(pre)} in the FP8 model: pass the FP8 model compiled from this float model")
        activation_pass(*arrays, self.hi, self.lo, 1.0 / self.layer.scale, float(HIST_LO),
                        float(HIST_PER_OCTAVE), self.hist.counts, self.sums, self.counts)

    def finish(self) -> None:
        L, s, c = self.layer, self.sums, self.counts
        L.sqnr_db, L.local_sqnr_db = sqnr_db(s[0], s[3]), sqnr_db(s[5], s[8])
        L.saturation = int(c[4]) / int(c[8]) if c[8] else None
        L.underflow = int(c[5]) / int(c[6]) if c[6] else 0.0
        L.amax_observed, L.amax_float, L.elements = float(s[10]), float(s[11]), int(c[8])
        self.hist.zeros = int(c[7])
        L.hist = self.hist


#: Ops whose output can be class scores, and ops that only reshape on the way to the output.
_SCORE_OPS = {"Softmax", "LogSoftmax", "Sigmoid", "Gemm", "MatMul", "Conv"}
_PASS_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Add", "Cast"}


def score_outputs(model: onnx.ModelProto) -> set:
    """Outputs that may hold class scores: made by Softmax/LogSoftmax/Sigmoid or a
    Gemm/MatMul/Conv layer, through only reshaping ops or a bias Add. Outputs made by
    Concat (detection heads), normalisation or pooling (embeddings) are not scores."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for o in model.graph.output:
        name, steps = o.name, 0
        while name in producer and steps < 8:
            node = producer[name]
            if node.op_type in _SCORE_OPS:
                out.add(o.name)
                break
            if node.op_type not in _PASS_OPS:
                break
            name, steps = node.input[0], steps + 1
    return out


class _OutputAcc:
    def __init__(self, name, scores: bool = True):
        self.name, self.err, self.scores = name, ErrorStats(), scores
        self.top1 = self.top1_n = self.equal = self.equal_n = 0
        self.is_float = None

    def update(self, ref, q):
        ref, q = np.asarray(ref), np.asarray(q)
        if self.is_float is None:
            self.is_float = ref.dtype.kind == "f"
        if ref.shape != q.shape:
            raise UserError(f"output {self.name!r} has shape {ref.shape} in the float model but {q.shape} in "
                            "the FP8 model: pass the FP8 model compiled from this float model")
        if not self.is_float:
            self.equal += int(np.count_nonzero(ref == q))
            self.equal_n += ref.size
            return
        self.err.update(ref, q)
        if self.scores and ref.ndim in (2, 3) and ref.shape[-1] > 1:
            a, b = ref.argmax(-1), q.argmax(-1)
            self.top1 += int(np.count_nonzero(a == b))
            self.top1_n += a.size

    def result(self) -> OutputFidelity:
        if not self.is_float:
            return OutputFidelity(self.name, exact_match=self.equal / max(1, self.equal_n), elements=self.equal_n)
        e = self.err
        return OutputFidelity(self.name, cosine=e.cosine, sqnr_db=e.sqnr_db, max_abs_error=e.max_abs_error,
                              top1_agreement=self.top1 / self.top1_n if self.top1_n else None,
                              elements=e.count, nonfinite=e.nonfinite)


def _consumers(qm: onnx.ModelProto) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for n in qm.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n.name)
    return out


def _samples_in(feed: dict) -> int:
    first = next(iter(feed.values()), None)
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def evaluate(float_model, fp8_model, data, *, samples: Optional[int] = None, metric=None,
             per_layer: bool = True, session_factory=None, batch_size: int = 1) -> EvalResult:
    """Compare ``fp8_model`` with ``float_model`` on ``data``; see :mod:`fp8onnx.evaluate`."""
    t0 = time.perf_counter()
    fm, qm = modelio.load_model(float_model), modelio.load_model(fp8_model)
    fixed = _fixed_inputs(qm)
    if fixed:
        # The FP8 model was compiled from the float model specialized to these input values
        # (its If branches inlined): compare with the same specialization, so inputs and
        # tensor names line up; data may still carry the fixed inputs (they become targets).
        fm = _prepared(fm, fixed)
    tensors = tensor_map(qm)
    check_formats(qm, tensors)
    check_same_inputs(fm, qm)
    out_names = [o.name for o in fm.graph.output]
    if [o.name for o in qm.graph.output] != out_names:
        raise UserError(f"the models have different outputs (float: {out_names}, FP8: "
                        f"{[o.name for o in qm.graph.output]}): pass the FP8 model compiled from this float model")
    factory = session_factory or session_for
    notes: List[str] = []
    layers: List[LayerFigures] = []
    acts: List[_ActivationAcc] = []
    if per_layer and not tensors:
        notes.append("the FP8 model has no fp8onnx.tensors metadata (not compiled by fp8onnx): no per-layer figures")
    if per_layer and tensors:
        consumers = _consumers(qm)
        q_has, f_has = _produced(qm), _produced(fm)
        prepared = None
        for name, info in sorted(tensors.items()):
            layer = LayerFigures(name=name, tensor=info["tensor"], kind=info["kind"], format=info["format"],
                                 consumers=consumers.get(name, []), amax_calibrated=info.get("amax"),
                                 scale=info.get("scale"), axis=info.get("axis"), channels=info.get("channels"))
            layers.append(layer)
            if layer.kind == "weight":
                models = [fm]
                if _float_weight(layer.tensor, [fm]) is None:
                    prepared = prepared or _prepared(fm)
                    models.append(prepared)
                weight_figures(layer, qm, models)
            elif name not in q_has or layer.tensor not in q_has:
                layer.note = "inside a subgraph (If/Loop/Scan body): not measured"
            elif layer.tensor not in f_has:
                layer.note = f"the float model has no tensor {layer.tensor!r}: not measured"
            elif not layer.scale or layer.scale <= 0:
                layer.note = "no scale recorded for this activation: not measured"
            else:
                acts.append(_ActivationAcc(layer, _formats.get(layer.format)))
    inputs = set(model_inputs(fm))
    twins = list(dict.fromkeys(a.layer.tensor for a in acts if a.layer.tensor not in inputs))
    f_fetch = out_names + [t for t in twins if t not in out_names]
    q_fetch = list(dict.fromkeys(f_fetch + [a.layer.name for a in acts]))
    f_sess = factory(_with_outputs(fm, f_fetch) if acts else fm)
    q_sess = factory(_with_outputs(qm, q_fetch) if acts else qm)
    scores = score_outputs(fm)
    outs = [_OutputAcc(n, n in scores) for n in out_names]
    metrics = None  # [FP32, FP8], fresh accumulators: the caller's object is not mutated
    if metric is not None:
        if not callable(metric) and not isinstance(metric, PerSample):
            raise UserError(f"metric must be a function metric(outputs, targets) -> float or a PerSample, "
                            f"not {type(metric).__name__}")
        make = (lambda: PerSample(metric.fn)) if isinstance(metric, PerSample) else (lambda: _WholeMetric(metric))
        metrics = [make(), make()]
    n_samples = n_feeds = 0
    for feeds, targets in eval_batches(data, fm, samples=samples, batch_size=batch_size):
        fo = dict(zip(f_fetch, f_sess.run(f_fetch, feeds)))
        qo = dict(zip(q_fetch, q_sess.run(q_fetch, feeds)))
        for name in inputs:
            fo.setdefault(name, feeds[name])
            qo.setdefault(name, feeds[name])
        for acc in outs:
            acc.update(fo[acc.name], qo[acc.name])
        for a in acts:
            a.update(fo[a.layer.tensor], qo[a.layer.tensor], qo[a.layer.name])
        if metrics:
            metrics[0].update({n: fo[n] for n in out_names}, targets)
            metrics[1].update({n: qo[n] for n in out_names}, targets)
        n_feeds += 1
        n_samples += _samples_in(feeds)
    for a in acts:
        a.finish()
    result = EvalResult(outputs=[o.result() for o in outs], layers=layers, samples=n_samples, feeds=n_feeds,
                        notes=notes)
    if metrics:
        result.metric_fp32, result.metric_fp8 = metrics[0].value(), metrics[1].value()
        if result.metric_fp32 != 0 and np.isfinite(result.metric_fp32):
            result.relative_loss = (result.metric_fp32 - result.metric_fp8) / abs(result.metric_fp32)
        else:
            notes.append(f"the FP32 metric is {result.metric_fp32}: the relative loss is undefined")
    result.seconds = time.perf_counter() - t0
    log.info("evaluated %d samples in %.2f s", n_samples, result.seconds)
    return result


def _fixed_inputs(qm: onnx.ModelProto) -> dict:
    """The recipe's ``fix_inputs`` recorded in an fp8onnx model's metadata ({} if none)."""
    for p in qm.metadata_props:
        if p.key == "fp8onnx.recipe":
            try:
                return dict(json.loads(p.value).get("fix_inputs") or {})
            except (ValueError, AttributeError):
                return {}
    return {}


def _prepared(fm: onnx.ModelProto, fixed: Optional[dict] = None) -> onnx.ModelProto:
    """The float model after the compiler's preparation (folded weights and inlined If
    branches get their names there), specialized first to ``fixed`` input values."""
    from ..api import prepare

    m = onnx.ModelProto()
    m.CopyFrom(fm)
    return prepare(m, fix_inputs=fixed)


def node_pattern(node: str) -> str:
    """The recipe regex that matches exactly the node called ``node``."""
    return "^" + re.escape(node) + "$"
