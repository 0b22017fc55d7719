"""BatchNormCalibration: match each Conv's per-channel output statistics under FP8 weights.

    Conv(x, W) -> BatchNormalization(mean, var)  ->  same, mean/var re-estimated under fq(W)
    Conv(x, W, b)  (BN folded in)                ->  Conv(x, a*W, a*b + mean_f - a*mean_q)

Runs on the FLOAT working model after planning and before activation calibration and
Q/DQ insertion (``recipe.bn_calib``). ``fq(W)`` is exactly what InsertQDQ will store:
per-channel max scaling (:func:`fp8onnx.qdq.weight_scales`) in the plan's weight format
(with ``weight_calib_method="mse"``, of the weights ``compile_model`` first clipped to the
chosen per-channel thresholds), applied in float32 numpy to the weights of a copy that
onnxruntime runs (CPU).

- **BN kept** (a Conv whose only reader is a BatchNormalization with constant
  parameters, directly or through a Relu alone, as CREPE normalizes after the
  activation): ``bn_mode="reestimate"`` is the paper's BN calibration: the BN's running
  mean and variance become the per-channel moments of its input (over N and the spatial
  dims) with every Conv weight fake-quantized. That also swaps the training statistics
  for calibration-set ones, which only works with calibration data like the training
  data: PP-OCR cls/rec calibrated on rendered grey text lines lose 17%/46% of their
  metric with it (a grey image gives colour channels ~0 variance: one first-layer
  channel was scaled 39x). ``bn_mode="match"`` (default) keeps the training statistics
  and moves them by what the FP8 weights change, ``r = std_q / std_f``,
  ``var' = (var + eps) r^2 - eps``, ``mean' = mean_q - (mean_f - mean) r``, so the BN
  output keeps the float model's moments, as for folded BN below.
- **BN folded** (a quantized Conv with a bias, or with a per-channel constant Add as
  its only reader, where Paddle's export keeps a folded BN's shift): with ``y_f`` the
  output of the float model and ``y_q`` the output under FP8 weights,
  ``a_c = std_f / std_q`` and ``W' = a_c W``, ``b' = a_c b + (mean_f - a_c mean_q)`` (a
  zero bias is added when the Conv has none). A Conv with neither had no BN folded
  into it and is left alone (``skipped``): DNSMOS computes its STFT as two bias-less
  DFT Convs whose outputs are squared and logged, and the per-channel shifts that
  lowered their outputs' squared error moved the quiet bins' log power so far that
  every score of its BN-calibrated E4M3 model was wrong (BAK ranking 0.26 against 0.925). Max scaling makes the FP8 codes of ``a_c W`` those of ``W`` with an
  ``a_c`` times larger scale, so the correction holds exactly in the FP8 model.
  ``a_c`` (cumulative) is clamped to ``clamp`` (logged); a channel with ``std_q ~ 0`` or
  ``std_f ~ 0`` keeps ``a_c = 1`` and only has its mean shifted.

Each correction fixes the whole error a layer sees, its own and its inputs', so a layer
must be measured after the layers above it are final. ``sequential=True`` (default)
does that exactly in one run over the data: the graph is cut into one stage per layer
(graph order), the float and the FP8-weight model run stage by stage side by side, and
each stage reads the tensors earlier stages left (see
:mod:`fp8onnx.passes._bn_measure`), so every node runs once per sample and model. The
tensors crossing a cut are held for every sample, in memory up to ``store_budget`` bytes
and in a temporary directory beyond it. Measured on PP-OCRv4 det (64 layers, 8 pages of
736x1472, E3M4, 2 shared cores): 321 s and 65 passes when each layer re-ran the graph
prefix it needs, 14-32 s in one staged run (docs/bench_ocr_calib.md). ``sequential=False`` runs
``iterations`` passes measuring every layer at once: layer ``k`` of a chain is exact
only after ``k`` passes, and before that it compensates upstream errors already fixed,
so on deep models it makes things worse (PP-OCR cls, 53 Convs, E4M3, weights stored in
float: label agreement 0.41 after 2 joint passes and 0.38 after 4, 0.97 sequential, 0.94
without calibration). Use it for shallow models only; its first pass also runs the
float model, a last one measures the "after" error. Statistics stream per batch in
float64; memory never holds samples x activations except the cut tensors above.

``activation_amax`` (``{(tensor, format): amax}``, the ranges InsertQDQ will use) makes the
FP8 side the whole FP8 model (``--bn-activations``): every planned activation use is read
through a FakeQuant at its final scale and every planned weight is fake-quantized, so each
correction also removes the channel shift that activation rounding causes through the
nonlinearities, which the paper's weights-only measurement leaves. On PP-OCRv4 det (E3M4,
mse weight scales) that took the probability map's mean error against FP32 from 3.2e-3
to 1.8e-3 and the OCR text goal from 226 to 229 of 240 lines (docs/bench_ocr_calib.md).
The FP8 side then runs in fp8onnx's session (the FakeQuants are ai.fp8onnx ops, which
compute what onnxruntime's Q/DQ does for the ONNX formats). The ranges come from the float
model before the pass, so ``probes`` is then left empty.

``probes`` (tensor names) asks the staged run to also keep activation statistics
(:class:`~fp8onnx.calibration.TensorStats`) of those tensors in the corrected FP8-weight
model, the model the compiler calibrates next, into ``stats``: the compiler then skips
that extra pass over the data for every tensor found there. The staged run sees each
tensor as later stages read it (a folded layer's output through its per-channel
correction), which equals the written model up to float32 rounding and corrections below
``tol`` that are not written.

With ``quantized_weights=True`` (default) every processed Conv weight is written back
already on the FP8 grid, ``fq(W')``: per-channel max scaling maps it to the same codes and
scales (tested for every format), and the activation calibration that runs next then sees
the activations of the FP8-weight model, which the corrections were made for. Measured
(E4M3): PP-OCR cls 0.97 -> 1.00 label agreement, rec 0.981 -> 0.9925 character accuracy
(= FP32); without BN calibration the same trick costs cls 0.94 -> 0.88.

``corrections`` lists per layer: node, kind (``bn-stats``/``folded``), channels, ``a_min``
and ``a_max`` (the channel scale applied; for BN ``sqrt((var+eps)/(var'+eps))``),
``mean_shift_max`` (largest mean error removed, over the channel's std), clamped
channels, output MSE vs the float model under FP8 weights before and after the layer's
correction (the BN output where BN is kept) and its relative reduction. Sequentially,
"before" has the layers above already corrected, so it is what this correction alone
removes; in joint mode it is the model without any correction. ``seconds`` and
``passes_run`` (runs over the data; a staged run counts once) say what it cost.

Only Conv and ConvTranspose (group 1) units of the main graph with quantized float32
weights are touched; Gemm and MatMul are left as they are, as are weights shared by
several nodes. ``modified`` is True when some parameter moved by more than ``tol``
(relative: ``|a_c - 1|``, mean shifts over the channel's std, variance relative);
smaller moves are not written. Folded (and ``match``) corrections make the float model
differ from the one they were measured against, so the layers they touched are listed in
``metadata_props["fp8onnx.bn_calibration"]`` and skipped by a later run, which is
then a no-op; re-estimated BN statistics are simply measured again.

>>> from fp8onnx import calibration, planner, recipe          # doctest: +SKIP
>>> plan = planner.plan_quantization(work, recipe.Recipe())   # doctest: +SKIP
>>> src = calibration.open_source("calib.npz", work, batch_size=64)  # doctest: +SKIP
>>> p = BatchNormCalibration(plan, src)                        # doctest: +SKIP
>>> p(work).modified, p.corrections[0]["kind"]                 # doctest: +SKIP
(True, 'bn-stats')
"""
from __future__ import annotations

import json
import logging
import time
from typing import List, Optional

import numpy as np
from onnx import numpy_helper

from fp8onnx.calibration.stages import DEFAULT_STORE_BUDGET
from fp8onnx.errors import CalibrationError, PreconditionError
from fp8onnx.graph import NameAllocator, set_metadata
from fp8onnx.passinfra import Pass, PassResult
from fp8onnx.planner import Plan

from ._bn_measure import FullQuant, FullRunner, StagedMeasure
from ._bn_targets import EPS, MARKER, Target, bn_eps, correct, fake_quant_weight, find_targets, read_marker

__all__ = ["BatchNormCalibration", "fake_quant_weight", "BN_MODES", "MARKER"]

log = logging.getLogger("fp8onnx.passes")

#: ``reestimate``: BN statistics := moments under FP8 weights (the paper's BN calibration);
#: ``match``: training statistics moved by the shift FP8 weights cause (output matches float).
BN_MODES = ("reestimate", "match")


class BatchNormCalibration(Pass):
    """Corrects Conv/BN parameters so FP8-weight outputs keep the float model's statistics."""

    name = "bn_calibration"

    def __init__(self, plan: Plan, source, *, sequential: bool = True, iterations: int = 2,
                 bn_mode: str = "match", clamp=(0.5, 2.0), tol: float = 1e-4,
                 quantized_weights: bool = True, progress: Optional[bool] = None,
                 providers=None, store_budget: int = DEFAULT_STORE_BUDGET, pow2_scales: bool = False,
                 probes=(), activation_amax: Optional[dict] = None, saturate: bool = True) -> None:
        super().__init__()
        if activation_amax is not None and not sequential:
            raise ValueError("activation_amax (measuring the whole FP8 model) needs sequential=True")
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        lo, hi = (float(c) for c in clamp)
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"clamp must satisfy 0 < low <= 1 <= high, got {clamp}")
        if int(store_budget) < 0:
            raise ValueError(f"store_budget must be >= 0 bytes, got {store_budget}")
        self.plan, self.source = plan, source
        self.iterations, self.sequential = int(iterations), bool(sequential)
        self.clamp, self.tol, self.progress = (lo, hi), float(tol), progress
        self.bn_mode, self.quantized_weights = bn_mode, bool(quantized_weights)
        self.providers = providers or ["CPUExecutionProvider"]
        self.store_budget = int(store_budget)
        self.pow2 = bool(pow2_scales)
        self.probes = list(probes)
        #: amax by (tensor, format) of the planned activations: given, the FP8 side is the
        #: whole FP8 model (activations fake-quantized at these ranges, every planned
        #: weight quantized), not the float model with FP8 weights.
        self.activation_amax = activation_amax
        self.saturate = bool(saturate)
        #: Activation statistics of ``probes`` in the corrected model, from the staged run.
        self.stats: dict = {}
        self.corrections: List[dict] = []
        self.skipped: List[tuple] = []
        self.passes_run = 0
        self.seconds = 0.0
        self.store_peak = 0
        self.spill_peak = 0

    def requires(self, model):
        for d in self.plan.units:
            if d.graph_path == "main" and d.weight_uses and d.graph is not model.graph:
                raise PreconditionError(
                    "the plan was made on another model: plan the model given to BatchNormCalibration")
        if getattr(self.source, "reiterable", True) is False:
            raise CalibrationError(
                "BatchNorm calibration reads the calibration data several times but this source "
                "can be read once: pass a list, a .npz file or a directory")

    # -- the pass ---------------------------------------------------------------------
    def call(self, model):
        t0 = time.perf_counter()
        self.corrections, self.passes_run, self.store_peak, self.spill_peak = [], 0, 0, 0
        self.stats = {}
        targets, self.skipped = find_targets(model, self.plan, bn_mode=self.bn_mode, pow2=self.pow2)
        if not targets:
            self.seconds = time.perf_counter() - t0
            return PassResult(model, False)
        from fp8onnx.calibration import CalibrationSource, open_source

        src = self.source if isinstance(self.source, CalibrationSource) else open_source(self.source, model)
        if self.sequential:
            self._staged(model, src, targets)
        else:
            self._joint(model, src, targets)
        modified = self._write(model, targets)
        self.seconds = time.perf_counter() - t0
        log.info("bn calibration: %d layers, %d passes over the data, %.2f s, %s", len(targets),
                 self.passes_run, self.seconds, "modified" if modified else "unchanged")
        return PassResult(model, modified)

    def _staged(self, model, src, targets: List[Target]) -> None:
        """Exact sequential correction in one staged run (float and FP8 side by side)."""

        def on_layer(t: Target, m) -> None:
            f_mean, f_var, q_mean, q_var = m.mean_b, m.var_b, m.mean_a, m.var_a
            self._record_before(t, f_mean, f_var, q_mean)
            if t.kind == "bn-stats":
                g0, h0 = t.bn_affine(t.mean0, t.var0)
                t.report["mse_before"] = m.mse(g0, h0, g0, h0)
            else:
                t.report["mse_before"] = m.mse(1.0, 0.0, 1.0, 0.0)
            correct(t, f_mean, f_var, q_mean, q_var, bn_mode=self.bn_mode, clamp=self.clamp, tol=self.tol)
            if t.kind == "bn-stats":
                g1, h1 = t.bn_affine(t.mean, t.var)
                t.report["mse_after"] = m.mse(g1, h1, g0, h0)
            else:  # y' = a y + (b - a b0) for the output y measured with (fq(W), b0)
                t.report["mse_after"] = m.mse(t.a, t.b - t.a.astype(np.float64) * t.b0, 1.0, 0.0)

        measure = StagedMeasure(model, targets, self.providers, budget=self.store_budget,
                                progress=self.progress, probes=self.probes, quant=self._full_quant(model))
        measure.run(src, on_layer)
        self.stats = measure.stats
        self.passes_run = 1
        self.store_peak, self.spill_peak = measure.peak_store, measure.peak_disk

    def _full_quant(self, model) -> Optional[FullQuant]:
        """The FP8 side's activation uses and weights, from the plan, when measuring the whole
        FP8 model (``activation_amax`` given). A use whose range is missing (calibration did
        not observe it) stays float, as InsertQDQ leaves it."""
        if self.activation_amax is None:
            return None
        acts, weights = {}, {}
        for d in self.plan.units:
            if d.graph_path != "main":
                continue
            for u in d.activation_uses if d.activation_format else ():
                amax = self.activation_amax.get((u.tensor, d.activation_format))
                if amax is not None:
                    acts.setdefault(u.node, []).append((u.index, u.tensor, d.activation_format, float(amax)))
            for u in d.weight_uses if d.weight_format else ():
                weights[u.tensor] = (d.weight_format, u.axis)
        return FullQuant(model.graph, acts, weights, saturate=self.saturate, pow2=self.pow2)

    def _joint(self, model, src, targets: List[Target]) -> None:
        """``iterations`` passes measuring every layer at once (shallow models only)."""
        if len(targets) > self.iterations:
            log.warning("bn calibration: %d layers but %d joint passes: deep layers will compensate "
                        "upstream errors already fixed (can be worse than no calibration); "
                        "use sequential=True", len(targets), self.iterations)
        runner = FullRunner(model, targets, self.providers)
        float_sess = runner.session(targets, quantized=False, outputs=sorted(
            {t.out for t in targets} | {t.reported for t in targets}))
        # Pass 1: float statistics, the "before" error and the first quantized statistics.
        fstats, qstats, mse_before = runner.run(src, targets, float_sess, progress=self.progress, tag="float+fp8")
        self.passes_run = 1
        for t in targets:
            t.report["mse_before"] = mse_before[t.reported]
            self._record_before(t, fstats[t.out].mean, fstats[t.out].var, qstats[t.out].mean)
        moved_any = False
        for it in range(self.iterations):
            if it:
                qstats = runner.run(src, targets, None, progress=self.progress, tag=f"iteration {it + 1}")[1]
                self.passes_run += 1
            moved = [correct(t, fstats[t.out].mean, fstats[t.out].var, qstats[t.out].mean, qstats[t.out].var,
                             bn_mode=self.bn_mode, clamp=self.clamp, tol=self.tol) for t in targets]
            moved_any |= any(moved)
            if not any(moved):
                break
        mse_after = mse_before
        if moved_any:
            mse_after = runner.run(src, targets, float_sess, progress=self.progress, tag="check",
                                   float_stats=False, q_stats=False)[2]
            self.passes_run += 1
        for t in targets:
            t.report["mse_after"] = mse_after[t.reported]

    @staticmethod
    def _record_before(t: Target, f_mean, f_var, q_mean) -> None:
        t.std_f = np.sqrt(f_var)
        t.report["mean_err"] = float(np.max(np.abs(q_mean - f_mean) / np.sqrt(np.maximum(f_var, EPS))))

    # -- writing ----------------------------------------------------------------------
    def _write(self, model, targets) -> bool:
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        names = NameAllocator(model)
        modified = False
        done = read_marker(model)
        for t in targets:
            r = t.report
            entry = {"node": t.node.name, "kind": t.kind, "channels": t.channels, "tensor": t.reported,
                     "mean_shift_max": r["mean_err"]}
            if t.kind == "bn-stats":
                a = np.sqrt((t.var0 + bn_eps(t.bn)) / (t.var + bn_eps(t.bn)))
                entry["mean_shift_max"] = float(np.max(np.abs(t.mean - t.mean0)
                                                       / np.sqrt(np.maximum(t.var0, EPS))))
                changed = (entry["mean_shift_max"] > self.tol
                           or np.max(np.abs(t.var - t.var0) / np.maximum(t.var0, EPS)) > 2 * self.tol)
                if changed:
                    inits[t.bn.input[3]].CopyFrom(numpy_helper.from_array(t.mean, t.bn.input[3]))
                    inits[t.bn.input[4]].CopyFrom(numpy_helper.from_array(t.var, t.bn.input[4]))
            else:
                a = t.a
                changed = (np.max(np.abs(t.a - 1)) > self.tol
                           or np.max(np.abs(t.b - t.b0) / np.maximum(t.std_f, EPS)) > self.tol)
                if changed:
                    inits[t.weight].CopyFrom(numpy_helper.from_array(t.weight_now(), t.weight))
                    if t.bias is None:
                        t.bias = names.tensor(f"{t.node.name}_bias")
                        graph.initializer.append(numpy_helper.from_array(t.b, t.bias))
                        while len(t.node.input) < 2:
                            t.node.input.append("")
                        t.node.input.append(t.bias)
                    else:
                        inits[t.bias].CopyFrom(numpy_helper.from_array(t.b, t.bias))
            if self.quantized_weights:
                # fq(W) is a fixed point of per-channel max scaling: InsertQDQ finds the same
                # codes, and the activation calibration that follows sees the FP8 weights.
                w = t.fake_quant(t.weight_now() if t.kind == "folded" and changed else t.w0)
                if not np.array_equal(w, numpy_helper.to_array(inits[t.weight])):
                    inits[t.weight].CopyFrom(numpy_helper.from_array(w, t.weight))
                    changed = True
            before, after = r["mse_before"], r["mse_after"]
            entry.update({"a_min": float(np.min(a)), "a_max": float(np.max(a)), "clamped": t.clamped,
                          "mse_before": before, "mse_after": after,
                          "mse_reduction": (1 - after / before) if before > 0 else 0.0,
                          "written": bool(changed)})
            self.corrections.append(entry)
            modified |= bool(changed)
            if changed and not (t.kind == "bn-stats" and self.bn_mode == "reestimate"):
                done[t.node.name] = {"kind": t.kind, "format": t.fmt.name, "mode": self.bn_mode}
        if done:
            set_metadata(model, MARKER, json.dumps(done, sort_keys=True))
        return modified
