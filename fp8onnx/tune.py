"""Accuracy-aware tuning: the most FP8 model whose metric loss stays within a target.

As Intel Neural Compressor does for the paper: quantize everything with the base recipe;
while the relative loss misses ``target_loss``, try, in this order,

0. *whole-model recipes* (:data:`RECIPE_CANDIDATES`): the recipes that kept the most zoo
   models within 1% in the coverage study, each as a whole; the best that lowers the loss
   becomes the recipe the later stages refine (a model often needs another recipe, not
   fallbacks: YOLOv8n's loss comes from its first Conv, PP-OCR det's from E3M4
   activations);
1. *formats per op type*: each quantized op type in E4M3, E3M4 and E5M2 (weights and
   activations alike); the best format of each op type is kept if it lowers the loss;
2. *op types in float*: each quantized op type kept float on its own; taken only if
   that alone meets the target (a whole op type in float costs the most speed);
3. *single nodes in float*, most sensitive first: sensitivity is the per-layer report of
   the first trial, a unit's worst *local* SQNR (its own Q/DQ error: the accumulated
   SQNR mostly reflects depth); each fallback that lowers the loss is kept;

until the target is met or ``max_trials`` models were compiled and evaluated. Every
trial reuses one calibration statistics collection (a temporary ``calib_cache``). If
no trial meets the target, the best one is returned with ``met_target=False`` and a
WARNING is logged.

>>> r = tune("models/digits_cnn.onnx", "models/data/digits_calib.npz",
...          "models/data/digits_test.npz", target_loss=0.001,
...          base_recipe={"format": "e5m2"})                     # doctest: +SKIP
>>> r.met_target, r.recipe.op_types, len(r.history)             # doctest: +SKIP
(True, {'Conv': 'e3m4'}, 3)

CLI: ``python -m fp8onnx.tune INPUT -o OUTPUT --calib C --data D --target-loss 0.01
[--max-trials N] [--report R.json]``; its metric is output fidelity (top-1 agreement
with the FP32 model for classifiers, else cosine similarity): loss = 1 - fidelity.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import onnx

from .cli import Parser, callable_module, check_positive, run_main, write_text_atomic
from .errors import UserError

__all__ = ["tune", "TuneResult", "Trial", "STAGES", "TUNE_FORMATS", "RECIPE_CANDIDATES", "main", "build_parser"]

log = logging.getLogger(__name__)

#: The search stages, in the order they run.
STAGES = ("recipe", "format", "op_type", "node")
#: What the "recipe" stage tries, in this order, each merged over the base recipe: the three
#: fixed recipes that kept the most of the zoo's models within 1% in the coverage study
#: (docs/coverage/coverage.md), the two with E3M4 activations under the underflow guard,
#: which moved no zoo model's loss up and took each from 14 to 15 of 18. Cheapest first: the
#: search stops at the first one that meets the target, and BatchNorm calibration costs a
#: pass of its own over the data.
RECIPE_CANDIDATES = (
    {"weight_format": "e3m4", "activation_format": "e4m3"},
    {"weight_format": "e3m4", "activation_format": "e3m4", "weight_calib_method": "mse", "keep_first": True,
     "underflow_guard": 0.05},
    {"weight_format": "e3m4", "activation_format": "e3m4", "weight_calib_method": "mse", "bn_calib": True,
     "underflow_guard": 0.05},
)


def _for_base(candidate: dict, base: dict) -> dict:
    """A whole-recipe candidate as it can apply over ``base``: dynamic scales collect no
    statistics, so the underflow guard (which reads them) is left out there."""
    c = dict(candidate)
    if base.get("dynamic"):
        c.pop("underflow_guard", None)
    return c


#: Formats stage 1 tries per op type, in this order.
TUNE_FORMATS = ("e4m3", "e3m4", "e5m2")


@dataclass
class Trial:
    """One compiled and evaluated candidate."""

    index: int
    stage: str                # "base", "recipe", "format", "op type float", "node float"
    delta: dict               # what changed against the base recipe, e.g. {"op_types": {"Conv": "e3m4"}}
    metric: float
    loss: float
    seconds: float
    kept: bool = False        # became the current recipe
    met_target: bool = False


@dataclass
class TuneResult:
    """The chosen model and recipe, and every trial (``history``)."""

    model: onnx.ModelProto
    recipe: object
    history: List[Trial] = field(default_factory=list)
    met_target: bool = False
    loss: float = float("nan")
    metric_fp32: Optional[float] = None
    target_loss: float = 0.01
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"met_target": self.met_target, "loss": self.loss, "target_loss": self.target_loss,
                "metric_fp32": self.metric_fp32, "recipe": self.recipe.to_dict(), "seconds": round(self.seconds, 3),
                "trials": [asdict(t) for t in self.history]}

    def summary_text(self) -> str:
        lines = [f"{len(self.history)} trials in {self.seconds:.1f} s; target relative loss {self.target_loss:g}"]
        for t in self.history:
            mark = "*" if t.kept else " "
            lines.append(f" {mark}{t.index:3d} {t.stage:14s} {json.dumps(t.delta, sort_keys=True):48s} "
                         f"metric {t.metric:.6g} loss {t.loss:+.5f} ({t.seconds:.1f} s)")
        status = "met" if self.met_target else "NOT met (best model returned)"
        lines.append(f"target {status}: loss {self.loss:+.5f}, recipe op_types {self.recipe.op_types}, "
                     f"nodes {self.recipe.nodes}")
        return "\n".join(lines)


def _merge(base: dict, delta: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out


class _Tuner:
    def __init__(self, model, calibration, eval_data, metric, target_loss, max_trials, base, compile_options,
                 calib_samples, eval_samples, batch_size, cache, stages, sensitivity, score=None):
        from . import modelio

        self.model = modelio.load_model(model)
        self.calibration, self.eval_data, self.metric = calibration, eval_data, metric
        self.target, self.max_trials, self.base = target_loss, max_trials, base
        self.options, self.calib_samples, self.eval_samples = compile_options, calib_samples, eval_samples
        self.batch_size, self.cache, self.stages, self.sensitivity = batch_size, cache, stages, sensitivity
        self.score = score
        self.history: List[Trial] = []
        self.best = None  # (loss, trial index, CompileResult): what is returned if no trial meets the target
        self.last = None  # the CompileResult of the last trial
        self.metric_fp32 = None

    def budget_left(self) -> bool:
        return len(self.history) < self.max_trials

    def run_trial(self, stage: str, delta: dict, *, per_layer: bool = False):
        from .api import compile_model
        from .evaluation import evaluate, within_loss

        t0 = time.perf_counter()
        recipe = _merge(self.base, delta)
        # BatchNorm calibration changes the float model the statistics belong to (the cache
        # would refuse it), and each such trial changes it differently: its staged run
        # measures the statistics of its own corrected model.
        cache = None if recipe.get("bn_calib") else self.cache
        res = compile_model(self.model, recipe=recipe, calibration=self.calibration, samples=self.calib_samples,
                            calib_cache=cache, **self.options)
        ev = None
        if self.score is None or per_layer:  # with a score function, eval_data serves only the per-layer order
            ev = evaluate(self.model, res.model, self.eval_data, samples=self.eval_samples, metric=self.metric,
                          per_layer=per_layer, batch_size=self.batch_size)
        if self.score is not None:
            if self.metric_fp32 is None:
                self.metric_fp32 = float(self.score(self.model))
                if not self.metric_fp32 > 0:
                    raise UserError(f"the score of the FP32 model is {self.metric_fp32}, so a relative loss is "
                                    "undefined: pass a score that is positive on the FP32 model")
            metric = float(self.score(res.model))
            loss = (self.metric_fp32 - metric) / self.metric_fp32
        elif self.metric is None:
            metric, loss = ev.fidelity, 1.0 - ev.fidelity
            self.metric_fp32 = 1.0
        else:
            if ev.relative_loss is None:
                raise UserError(f"the metric is {ev.metric_fp32} on the FP32 model, so a relative loss is "
                                "undefined: pass a metric that is positive on the FP32 model")
            metric, loss = ev.metric_fp8, ev.relative_loss
            self.metric_fp32 = ev.metric_fp32
        trial = Trial(len(self.history), stage, delta, float(metric), float(loss),
                      round(time.perf_counter() - t0, 3), met_target=within_loss(loss, self.target))
        self.history.append(trial)
        log.info("trial %d %s %s: metric %.6g loss %.5f", trial.index, stage, delta, metric, loss)
        if self.best is None or loss < self.best[0]:
            self.best = (loss, trial.index, res)
        self.last = res
        return trial, res, ev

    def _best_alternative(self, stage: str, deltas: List[dict], current: float) -> Optional[Trial]:
        """Try ``deltas`` in order while the budget lasts, stopping at one that meets the
        target; the best that beats ``current`` is marked kept and returned (None if none)."""
        best = None
        for d in deltas:
            if not self.budget_left():
                break
            t, _, _ = self.run_trial(stage, d)
            if t.loss < current and (best is None or t.loss < best.loss):
                best = t
            if t.met_target:
                break
        if best is not None:
            best.kept = True
        return best

    def tune(self):
        delta: dict = {}
        trial, res, ev = self.run_trial("base", delta, per_layer=True)
        trial.kept = True
        current = trial.loss
        if trial.met_target:
            return delta, trial
        # Stage 0: whole-model recipes; the best that lowers the loss is refined below.
        if "recipe" in self.stages:
            cands = [_for_base(c, self.base) for c in RECIPE_CANDIDATES]
            cands = [c for c in cands if any(self.base.get(k) != v for k, v in c.items())]
            best = self._best_alternative("recipe", cands, current)
            if best is not None:
                current, delta = best.loss, best.delta
                if best.met_target:
                    return delta, best
        op_counts = Counter(u.op_type for u in res.plan.units if u.status != "float")
        ops = [op for op, _ in op_counts.most_common()]
        # Stage 1: formats per op type.
        for op in (ops if "format" in self.stages else ()):
            now = _merge(self.base, delta)
            cur_fmt = now.get("op_types", {}).get(op, now.get("format", now.get("weight_format", "e4m3")))
            best = self._best_alternative("format", [_merge(delta, {"op_types": {op: fmt}})
                                                     for fmt in TUNE_FORMATS if fmt != cur_fmt], current)
            if best is not None:
                current, delta = best.loss, best.delta
                if best.met_target:
                    return delta, best
        # Stage 2: one op type in float, taken only when that alone meets the target.
        for op in (ops if "op_type" in self.stages else ()):
            if not self.budget_left():
                break
            t, _, _ = self.run_trial("op type float", _merge(delta, {"op_types": {op: "float"}}))
            if t.met_target:
                t.kept = True
                return t.delta, t
        # Stage 3: single nodes in float, most sensitive first, accumulating what helps.
        for anchor in (_sensitive_anchors(res.plan, ev, self.sensitivity) if "node" in self.stages else ()):
            if not self.budget_left():
                break
            from .evaluation import node_pattern

            t, _, _ = self.run_trial("node float", _merge(delta, {"nodes": {node_pattern(anchor): "float"}}))
            if t.loss < current:
                t.kept, current, delta = True, t.loss, t.delta
                if t.met_target:
                    return delta, t
        return delta, None


def _sensitive_anchors(plan, ev, by: str = "local") -> List[str]:
    """Quantized units' anchor nodes, most sensitive first.

    ``by="local"``: a unit's worst local SQNR (its activations' own Q/DQ error) or weight
    SQNR; ``by="accumulated"``: the worst SQNR against the float model of any tensor it
    reads (deep units first, as error accumulates).
    """
    owner = {}
    for u in plan.units:
        if u.status != "float" and u.graph_path == "main":
            for n in u.nodes:
                owner[n] = u.node
    score = {}
    for layer in ev.layers:
        value = layer.local_sqnr_db if layer.kind == "activation" and by == "local" else layer.sqnr_db
        if value is None:
            continue
        for c in layer.consumers:
            if c in owner:
                score[owner[c]] = min(score.get(owner[c], float("inf")), value)
    return sorted(score, key=lambda a: (score[a], a))


def tune(model, calibration, eval_data, *, target_loss: float = 0.01, metric=None, score=None,
         max_trials: int = 24, base_recipe=None, calib_samples: Optional[int] = None,
         eval_samples: Optional[int] = None, batch_size: int = 1, stages=STAGES, sensitivity: str = "local",
         **compile_options) -> TuneResult:
    """Find the recipe with the most FP8 whose relative loss is within ``target_loss``.

    ``metric``: as for :func:`fp8onnx.evaluate` (``metric(outputs, targets) -> float`` or
    ``PerSample``, higher is better); None uses output fidelity (loss = 1 - top-1
    agreement with FP32 for classifiers, 1 - cosine otherwise). ``score``: instead of
    ``metric``, a function of a whole model, ``score(model_proto) -> float`` (higher is
    better), for task metrics that need a pipeline around the model (OCR, detection); the
    loss is relative to ``score`` of the FP32 model, and ``eval_data`` then only feeds the
    per-layer sensitivity of the first trial. ``eval_data``: any form evaluate accepts, read
    once per trial (a one-shot iterator is read into a list).
    ``base_recipe`` and ``compile_options`` are what every trial starts from.
    ``stages``: which of ``"recipe"``, ``"format"``, ``"op_type"``, ``"node"`` to try (e.g.
    only ``("node",)`` for hardware with one FP8 format: the first two change formats). ``sensitivity``: the node order,
    ``"local"`` or ``"accumulated"`` SQNR (see :func:`_sensitive_anchors`).
    """
    from .api import make_recipe

    t0 = time.perf_counter()
    if not 0 <= float(target_loss) < 1:
        raise UserError(f"target loss {target_loss}: give a relative loss in [0, 1), e.g. 0.01 for 1%")
    bad = [x for x in stages if x not in STAGES]
    if bad or not stages:
        raise UserError(f"tuning stages {list(stages)}: choose from {', '.join(STAGES)}")
    if sensitivity not in ("local", "accumulated"):
        raise UserError(f"sensitivity {sensitivity!r}: choose 'local' or 'accumulated'")
    if score is not None and metric is not None:
        raise UserError("pass either metric (per batch of outputs) or score (per model), not both")
    if int(max_trials) < 1:
        raise UserError(f"max_trials {max_trials}: give at least 1")
    base = make_recipe(base_recipe, **{k: compile_options.pop(k) for k in list(compile_options)
                                       if k in ("format", "weight_format", "activation_format", "scheme",
                                                "emit", "calib_method", "weight_calib_method",
                                                "percentile", "exclude",
                                                "keep_first_last", "keep_first", "pow2_scales", "opset")}).to_dict()
    if isinstance(eval_data, Iterator):
        eval_data = list(eval_data)  # every trial reads it again
    if isinstance(calibration, Iterator):
        calibration = list(calibration)
    tmp = tempfile.mkdtemp(prefix="fp8onnx_tune_")
    try:
        tuner = _Tuner(model, calibration, eval_data, metric, float(target_loss), int(max_trials), base,
                       compile_options, calib_samples, eval_samples, batch_size, os.path.join(tmp, "stats.npz"),
                       tuple(stages), sensitivity, score)
        delta, chosen = tuner.tune()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from .recipe import Recipe

    if chosen is None:
        loss, index, res = tuner.best
        chosen = tuner.history[index]
        log.warning("tune: no trial met the target relative loss %g in %d trials; returning the best (trial %d, "
                    "loss %.5f)", target_loss, len(tuner.history), index, loss)
    else:
        res = tuner.last  # a trial that meets the target ends the search: it is the last one run
    recipe = Recipe.from_dict(_merge(base, chosen.delta))
    return TuneResult(res.model, recipe, tuner.history, chosen.met_target, float(chosen.loss), tuner.metric_fp32,
                      float(target_loss), time.perf_counter() - t0)


# --- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import formats as _formats
    from . import schemes as _schemes

    p = Parser(prog="python -m fp8onnx.tune",
                description="Compile to FP8, falling back to other formats or float until the output fidelity "
                            "loss is within a target.")
    p.add_argument("input", help="FP32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the chosen FP8 model")
    p.add_argument("--calib", required=True, help="calibration data: data.npz, a directory of .npz feeds, or 'random'")
    p.add_argument("--data", required=True, help="evaluation data (.npz or a directory of .npz feeds)")
    p.add_argument("--target-loss", type=float, default=0.01,
                   help="largest accepted relative loss of fidelity, e.g. 0.01 = 1%% (default)")
    p.add_argument("--max-trials", type=int, default=24, help="compile-and-evaluate budget (default 24)")
    p.add_argument("--format", choices=list(_formats.names()), help="base format (default e4m3)")
    p.add_argument("--scheme", choices=list(_schemes.names()), help="operator scheme (default standard)")
    p.add_argument("--recipe", help="base recipe JSON")
    p.add_argument("--samples", type=int, help="use at most N calibration samples")
    p.add_argument("--eval-samples", type=int, help="use at most N evaluation samples")
    p.add_argument("--batch-size", type=int, default=1, help="samples per run for .npz data (default 1)")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                   help="search stages to run, in order: whole-model recipes (other formats, MSE weight "
                        "scales, first layer float, BatchNorm calibration), other formats per op type, op "
                        "types in float, single nodes in float (default: all; 'node' alone keeps --format)")
    p.add_argument("--sensitivity", choices=["local", "accumulated"], default="local",
                   help="node order of the last stage: worst local SQNR (own Q/DQ error) or worst SQNR "
                        "against the float model first (default local)")
    p.add_argument("--report", help="write the trial log and the chosen recipe here (JSON)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and log every trial")
    return p


def main(argv=None) -> int:
    return run_main(build_parser(), _run, argv)


def _run(args) -> int:
    from . import modelio

    check_positive(samples=args.samples, eval_samples=args.eval_samples, max_trials=args.max_trials,
                   batch_size=args.batch_size)
    modelio.check_output_path(args.output, input_path=args.input)
    if args.report:
        modelio.check_output_path(args.report, input_path=args.input)
        if os.path.abspath(args.report) == os.path.abspath(args.output):
            raise UserError("--report and -o must be different files")
    result = tune(args.input, args.calib, args.data, target_loss=args.target_loss, max_trials=args.max_trials,
                  base_recipe=args.recipe, calib_samples=args.samples, eval_samples=args.eval_samples,
                  batch_size=args.batch_size, stages=args.stages, sensitivity=args.sensitivity, format=args.format, scheme=args.scheme)
    modelio.save_model(result.model, args.output, input_path=args.input)
    if args.report:
        write_text_atomic(args.report, json.dumps(result.to_dict(), indent=1, sort_keys=True))
    print(result.summary_text())
    if not result.met_target:
        print(f"warning: target loss {args.target_loss:g} not met in {len(result.history)} trials; wrote the best "
              f"model (loss {result.loss:.5f})", file=sys.stderr)
    return 0


callable_module(__name__, tune)


if __name__ == "__main__":
    sys.exit(main())
