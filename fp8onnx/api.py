"""The public entry point: ``fp8onnx.compile(model, recipe=..., calibration=...)``.

It copies the user's model once (turning the inputs ``fix_inputs`` names into constants),
prepares the copy (constants lifted, opset raised, weight-only subgraphs folded, shapes
inferred, Ifs with a known condition inlined, names made unique, nodes sorted), plans
which units become FP8, calibrates activation ranges on the float model, inserts the
Q/DQ nodes and writes the recipe into ``metadata_props``. The user's model and files are
never modified.

>>> import fp8onnx
>>> q = fp8onnx.compile("models/digits_cnn.onnx", calibration="models/data/digits_calib.npz",
...                     format="e4m3")                                     # doctest: +SKIP
>>> result = fp8onnx.api.compile_model("model.onnx", calibration="random")  # doctest: +SKIP
>>> result.report["summary"]["quantized_by_op"]                             # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx

from . import calibration as _calib
from . import formats as _formats
from . import modelio
from .errors import UserError
from .passinfra import DumpAfter, PassManager, Timing
from .planner import Plan, plan_quantization
from .recipe import Recipe
from .report import build_report
from .underflow import ADVICE_LIMIT, FALLBACK, guard_notes, guard_underflow, underflow_advice

__all__ = ["compile", "compile_model", "CompileResult", "prepare", "make_recipe"]

log = logging.getLogger("fp8onnx")


@dataclass
class CompileResult:
    model: onnx.ModelProto
    plan: Plan
    report: dict


def make_recipe(recipe: Union[None, str, dict, Recipe] = None, **options) -> Recipe:
    """A validated Recipe from a path, dict or Recipe, with keyword options on top."""
    if isinstance(recipe, Recipe):
        base = recipe.to_dict()
    elif isinstance(recipe, str):
        base = Recipe.load(recipe).to_dict()
    elif isinstance(recipe, dict):
        base = Recipe.from_dict(recipe).to_dict()
    elif recipe is None:
        base = {}
    else:
        raise UserError(f"recipe must be a path, dict or Recipe, not {type(recipe).__name__}")
    fmt = options.pop("format", None)
    if fmt is not None:
        base["weight_format"] = base["activation_format"] = fmt
    base.update({k: v for k, v in options.items() if v is not None})
    return Recipe.from_dict(base)


def prepare(model: onnx.ModelProto, *, opset: int = 19, instruments=(), skip=(),
            fix_inputs: Optional[dict] = None) -> onnx.ModelProto:
    """The preparation pipeline, in place on ``model``; returns the prepared model.

    ``fix_inputs`` first turns those inputs into constants (FixInputs). Ifs whose condition is known are inlined after constants are folded and shapes
    inferred; as long as that inlines something, folding, inference and inlining run
    again (an inlined ``Equal(const, const)`` or ``Shape(x)[i]`` may decide a nested If).
    """
    from .passes import (FixInputs, FoldConstants, InferShapes, InlineConstantIf, LiftConstants, NameNodes,
                         TopologicalSort, UpgradeOpset)

    if fix_inputs:
        model = PassManager([FixInputs(fix_inputs)], instruments=instruments, skip=skip,
                            name="fix_inputs")(model).model
    inline = InlineConstantIf()
    model = PassManager([LiftConstants(), UpgradeOpset(target=opset), FoldConstants(), InferShapes(), inline],
                        instruments=instruments, skip=skip, name="prepare")(model).model
    for _ in range(8):  # each round removes at least one If; real models need one or two
        if not getattr(inline, "inlined", None):
            break
        model = PassManager([FoldConstants(), InferShapes(), inline], instruments=instruments, skip=skip,
                            name="prepare_inlined")(model).model
    return PassManager([NameNodes(), TopologicalSort()], instruments=instruments, skip=skip,
                       name="prepare_finish")(model).model


def compile_model(model, *, recipe=None, calibration=None, samples: Optional[int] = None,
                  batch_size: int = 1, calib_cache: Optional[str] = None, dump_dir: Optional[str] = None,
                  skip=(), fix_inputs: Optional[dict] = None, **options) -> CompileResult:
    """Compile and also return the plan and the report (what the CLI prints).

    ``fix_inputs`` (``{"sr": 16000}``) turns those inputs into constants before anything
    else (the recipe records it), so Ifs on them are inlined and their contents quantized
    like the rest; calibration feeds may still hold them (with the same values).
    """
    from .passes import Annotate, InsertQDQ, TopologicalSort

    t0 = time.perf_counter()
    if fix_inputs is not None and isinstance(fix_inputs, dict):
        # numpy values become plain JSON ones: the recipe stored in the model holds them.
        fix_inputs = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in fix_inputs.items()}
    recipe = make_recipe(recipe, fix_inputs=fix_inputs, **options)
    source = modelio.load_model(model)
    work = onnx.ModelProto()
    work.CopyFrom(source)  # the only copy: every pass after this edits ``work`` in place
    timing = Timing()
    instruments = [timing] + ([DumpAfter(dump_dir)] if dump_dir else [])
    work = prepare(work, opset=recipe.opset, instruments=instruments, skip=skip, fix_inputs=recipe.fix_inputs)
    plan = plan_quantization(work, recipe)
    _check_precision(plan)
    clip = recipe.weight_calib_method != "max"
    gptq = recipe.weight_rounding == "gptq"
    amax = {}
    tensors = plan.activation_tensors()
    calib_seconds = 0.0
    bn_corrections = None
    bn_stats = None
    guarded, advice = [], []
    needs_data = (tensors and not recipe.dynamic) or recipe.bn_calib or gptq
    src = None
    grams, rounding = None, None
    if needs_data:
        if calibration is None:
            raise UserError(
                "calibration data is needed for "
                + ("BatchNorm calibration" if recipe.bn_calib else
                   "GPTQ weight rounding" if gptq else "activation scales")
                + ": pass --calib data.npz (input names as keys), --calib DIR (one .npz feed per file) "
                "or --calib random (no real data: poor accuracy)")
        if recipe.fix_inputs:
            # Feeds made for the original model: checked against it, fixed inputs dropped.
            src = _WithoutFixedInputs(_calib.open_source(calibration, source, samples=samples,
                                                         batch_size=batch_size), work, recipe.fix_inputs)
        else:
            src = _calib.open_source(calibration, work, samples=samples, batch_size=batch_size)
    stats = ranges = None
    if recipe.bn_activations and tensors:
        # Whole-model BN calibration measures the model at its final activation scales, so
        # they come first, from the float model as without BN calibration (one
        # --calib-cache then serves both); they are not re-measured after the corrections.
        tc = time.perf_counter()
        stats = _calib.collect_or_load(work, tensors, src, cache=calib_cache)
        calib_seconds = time.perf_counter() - tc
    if clip and recipe.bn_calib and not gptq:
        # BN calibration measures the weights the FP8 model will hold (see _clip_weights).
        _clip_weights(plan, recipe.weight_calib_method, recipe.pow2_scales)
        clip = False
    if gptq:
        # The layers' inputs are the float model's, gathered before any weight changes; the
        # rounding itself waits for the clip (it rounds what the clip leaves) and for BN
        # calibration, which must measure the rounded weights, it comes first.
        grams = _weight_grams(plan, work, src)
        if recipe.bn_calib:
            if clip:
                _clip_weights(plan, recipe.weight_calib_method, recipe.pow2_scales)
                clip = False
            rounding = _round_weights(plan, grams)
    if recipe.bn_calib:
        from .passes import BatchNormCalibration

        # Without --bn-activations the staged run also gathers the activation statistics
        # (of the corrected model): one pass over the data fewer.
        act_amax = None
        if stats is not None:
            # The ranges InsertQDQ will use: the same guard and method on the same
            # statistics, cached in ``ranges`` for the re-planned units below.
            ranges = {}
            guard_underflow(plan, stats, recipe, ranges)
            act_amax = _activation_ranges(plan, stats, recipe, ranges)
        bn = BatchNormCalibration(plan, src, bn_mode=recipe.bn_mode, pow2_scales=recipe.pow2_scales,
                                  probes=tensors if not (recipe.dynamic or recipe.bn_activations) else (),
                                  activation_amax=act_amax, saturate=recipe.saturate)
        work = PassManager([bn], instruments=instruments, skip=skip, name="bn_calibration")(work).model
        bn_corrections = {"seconds": round(bn.seconds, 3), "passes": bn.passes_run, "layers": bn.corrections,
                          "skipped": [list(x) for x in bn.skipped],
                          # what the staged run held between layers: in memory, and beyond
                          # its budget in a temporary directory (deleted when it ends)
                          "store_peak_mb": round(bn.store_peak / 2**20, 1),
                          "spill_peak_mb": round(bn.spill_peak / 2**20, 1)}
        plan = plan_quantization(work, recipe)  # the pass edited weights and nodes: plan afresh
        bn_stats = bn.stats
    if tensors and not recipe.dynamic:
        if stats is None:
            tc = time.perf_counter()
            stats = _calib.collect_or_load(work, tensors, src, cache=calib_cache, known=bn_stats)
            calib_seconds = time.perf_counter() - tc
        if ranges is None:
            ranges = {}  # (tensor, format) -> threshold, picked once for the guard and the scales
        guarded = guard_underflow(plan, stats, recipe, ranges)
        advice = [] if recipe.underflow_guard else underflow_advice(plan, stats, recipe, ranges=ranges)
        amax = _activation_ranges(plan, stats, recipe, ranges)
    if clip:
        # After the statistics: activation ranges are the float model's, as with max
        # scaling, so one --calib-cache (and tune's shared one) serves every weight method.
        _clip_weights(plan, recipe.weight_calib_method, recipe.pow2_scales)
    if gptq and rounding is None:
        rounding = _round_weights(plan, grams)

    insert = InsertQDQ(plan, amax, emit=recipe.emit, saturate=recipe.saturate, dynamic=recipe.dynamic,
                       pow2_scales=recipe.pow2_scales, notes=guard_notes(guarded, recipe.underflow_guard))
    work = PassManager([insert], instruments=instruments, skip=skip, name="quantize")(work).model
    # The map of inserted tensors lets evaluation tools find each quantized tensor's float twin.
    annotate = Annotate(recipe, extra={"tensors": insert.inserted})
    work = PassManager([annotate, TopologicalSort()], instruments=instruments, skip=skip,
                       name="finish")(work).model
    _check(work)
    report = build_report(work, source, plan, insert.inserted, recipe, timing.records,
                          calib_seconds=calib_seconds, total_seconds=time.perf_counter() - t0)
    if bn_corrections is not None:
        report["bn_calibration"] = bn_corrections
    if rounding is not None:
        report["weight_rounding"] = rounding
    if recipe.underflow_guard:
        report["underflow_guard"] = {"limit": recipe.underflow_guard, "fallback": FALLBACK, "tensors": guarded}
    elif advice:
        report["underflow_advice"] = {"limit": ADVICE_LIMIT, "fallback": FALLBACK, "tensors": advice}
    return CompileResult(work, plan, report)


def compile(model, *, recipe=None, calibration=None, **kwargs) -> onnx.ModelProto:
    """Compile ``model`` (a path or ModelProto) to FP8; returns a new ModelProto.

    ``recipe``: a Recipe, a dict or a JSON path; keyword options (``format``,
    ``weight_format``, ``activation_format``, ``scheme``, ``emit``, ``calib_method``, ``weight_calib_method``,
    ``exclude``, ``keep_first_last``, ``opset``...) override its fields.
    ``calibration``: a .npz path, a directory of .npz feeds, ``"random"``, an iterable
    of feed dicts or an onnxruntime CalibrationDataReader. ``samples`` caps how many
    samples are used; ``batch_size`` groups .npz samples; ``calib_cache`` saves and
    reuses statistics.
    """
    return compile_model(model, recipe=recipe, calibration=calibration, **kwargs).model


def _weight_targets(plan: Plan, why: str):
    """(index, tensor, initializer, format, axis, reader names) of each planned float32
    weight that one format and axis quantize and only planned weight uses read. The others
    keep max scaling and plain rounding, logged with ``why`` (the method they miss)."""
    from .graph import GraphIndex

    uses = {}
    for d in plan.units:
        for u in d.weight_uses:
            if d.weight_format:
                uses.setdefault((id(d.graph), u.tensor), (d.graph, set(), set()))
                entry = uses[(id(d.graph), u.tensor)]
                entry[1].add((d.weight_format, u.axis))
                entry[2].add(u.node)
    indexes = {}
    for (gid, tensor), (graph, kinds, nodes) in sorted(uses.items(), key=lambda kv: kv[0][1]):
        index = indexes.setdefault(gid, GraphIndex(graph))
        init = index.initializers.get(tensor)
        readers = {n.name for n in index.consumers.get(tensor, [])}
        if (init is None or init.data_type != onnx.TensorProto.FLOAT or len(kinds) != 1
                or readers != nodes or tensor in index.graph_outputs):
            log.info("weight %s keeps max scaling and nearest rounding (no %s): %s", tensor, why,
                     "used in several formats or axes" if len(kinds) != 1 else "shared with unplanned readers")
            continue
        (fmt_name, axis), = kinds
        yield index, tensor, init, _formats.get(fmt_name), axis, nodes


def _clip_weights(plan: Plan, method: str, pow2: bool = False) -> None:
    """Clip each planned float32 weight per channel to the threshold ``method`` picks
    (:func:`fp8onnx.qdq.weight_scales`), in place.

    Max scaling of the clipped weight then gives exactly the chosen scale and codes
    (saturation clips there anyway), so InsertQDQ and BatchNormCalibration, which use
    max scaling, store and measure what ``method`` chose. A weight read by any node that
    is not a planned weight use of it in one format and axis (a float node, or two
    formats) keeps max scaling, logged.
    """
    from onnx import numpy_helper

    from . import qdq

    for _, tensor, init, fmt, axis, _ in _weight_targets(plan, f"{method} thresholds"):
        w = numpy_helper.to_array(init).astype(np.float32)
        t, _ = qdq.weight_scales(w, fmt, axis, method, pow2=pow2)
        shape = [1] * w.ndim
        shape[axis] = -1
        t = np.where(t > 0, t, np.float32(np.inf)).reshape(shape)  # all-zero channels stay as they are
        clipped = np.clip(w, -t, t).astype(np.float32)
        if not np.array_equal(clipped, w):
            init.CopyFrom(numpy_helper.from_array(clipped, tensor))


def _weight_grams(plan: Plan, model: onnx.ModelProto, src) -> dict:
    """The Gram matrices GPTQ needs, over ``src`` on the float ``model``: {"layers": {weight:
    (layer, [groups, K, K] matrices)}, "nearest": [weights GPTQ does not cover], "seconds": s}."""
    from .calibration.gram import MAX_INPUTS, collect_grams, inputs_per_output, layer_for

    if not src.reiterable:
        raise UserError(f"GPTQ weight rounding reads the calibration data twice, which a {src.kind} "
                        "source cannot give: pass an .npz, a directory of .npz feeds or a list of feeds")
    t0 = time.perf_counter()
    layers, nearest_only = {}, []
    for index, tensor, init, fmt, axis, nodes in _weight_targets(plan, "GPTQ rounding"):
        readers = index.consumers.get(tensor, [])
        node = readers[0] if len(readers) == 1 else None
        layer = None
        if node is not None and index.graph is model.graph and list(node.input[1:2]) == [tensor]:
            layer = layer_for(node, tuple(init.dims), axis)
        if layer is None or inputs_per_output(layer, tuple(init.dims)) > MAX_INPUTS:
            nearest_only.append(tensor)
        else:
            layers[tensor] = (layer, tuple(init.dims))
    grams = collect_grams(model, layers, src) if layers else {}
    for tensor in nearest_only:
        log.info("weight %s keeps nearest rounding: GPTQ covers Conv, Gemm and 2-D MatMul "
                 "weights of the main graph read by one node, with at most %d inputs per output",
                 tensor, MAX_INPUTS)
    return {"layers": {t: (layers[t][0], g) for t, g in grams.items()},
            "nearest": sorted(nearest_only + [t for t in layers if t not in grams]),
            "seconds": time.perf_counter() - t0}


def _round_weights(plan: Plan, grams: dict) -> dict:
    """GPTQ-round, in place, each planned weight ``grams`` covers, on the grid of its max
    scale (after an mse clip, the clipped weight's): InsertQDQ's max scaling then stores
    exactly these codes (see fp8onnx.calibration.gptq). Returns the report's entry."""
    from onnx import numpy_helper

    from . import qdq
    from .calibration import gptq as _gptq
    from .calibration.gram import from_rows, weight_rows

    t0 = time.perf_counter()
    rows = []
    for _, tensor, init, fmt, axis, _ in _weight_targets(plan, "GPTQ rounding"):
        if tensor not in grams["layers"]:
            continue
        layer, matrices = grams["layers"][tensor]
        w = numpy_helper.to_array(init).astype(np.float32)
        _, scale = qdq.weight_scales(w, fmt, axis, "max")
        q_rows, e_near, e_gptq = _gptq.round_layer(weight_rows(w, layer), matrices, fmt,
                                                   np.asarray(scale, np.float32).reshape(-1))
        init.CopyFrom(numpy_helper.from_array(from_rows(q_rows, w, layer).astype(np.float32), tensor))
        rows.append({"weight": tensor, "node": layer.node, "groups": layer.groups,
                     # squared output error over the calibration inputs, GPTQ's over nearest rounding's
                     "output_error_ratio": round(e_gptq / e_near, 4) if e_near > 0 else 1.0})
    return {"method": "gptq", "seconds": round(grams["seconds"] + time.perf_counter() - t0, 3),
            "layers": rows, "nearest": grams["nearest"]}


def _activation_ranges(plan: Plan, stats: dict, recipe: Recipe, known: Optional[dict] = None) -> dict:
    """amax per (tensor, format) by the recipe's range method, taken from ``known`` where it
    holds the key; unobserved tensors stay float."""
    known = known or {}
    amax = {}
    for d in plan.units:
        kept = []
        for use in d.activation_uses:
            st = stats.get(use.tensor)
            if st is None or not getattr(st, "count", 0):
                d.notes.append(f"activation {use.tensor!r} kept float: calibration could not observe it")
                continue
            key = (use.tensor, d.activation_format)
            if key in known:
                amax[key] = known[key]
            elif key not in amax:
                amax[key] = float(_calib.choose_amax(st, recipe.calib_method, _formats.get(d.activation_format),
                                                     percentile=recipe.percentile))
            kept.append(use)
        d.activation_uses[:] = kept
    return amax


class _WithoutFixedInputs(_calib.CalibrationSource):
    """Feeds of ``inner`` without the fixed inputs; a feed giving another value is an error."""

    def __init__(self, inner, model, fixed: dict) -> None:
        super().__init__(model, None, inner.batch_size)
        self.inner, self.fixed = inner, fixed
        self.kind, self.rows, self.reiterable = inner.kind, inner.rows, inner.reiterable
        self.num_samples = inner.num_samples

    def _raw(self):
        import numpy as np

        for i, feed in enumerate(self.inner):
            for name, value in self.fixed.items():
                if name in feed and not np.all(np.asarray(feed[name]) == np.asarray(value)):
                    raise UserError(f"calibration feed {i} gives input {name!r} other values than the fixed "
                                    f"{value!r}: drop it from the feeds or fix it to the value they hold")
            yield ({k: v for k, v in feed.items() if k not in self.fixed}, f"feed {i}", i,
                   self.inner.samples_in(feed))


def _check_precision(plan: Plan) -> None:
    """A model computing in float16 (or bfloat16, double) has nothing the compiler can
    quantize: say so, rather than write the model back unchanged."""
    if any(d.activation_uses or d.weight_uses for d in plan.units):
        return
    held = next((d for d in plan.units if d.precision), None)
    if held is not None:
        raise UserError(f"nothing to quantize: the model computes in {held.precision} ({held.op_type} "
                        f"{held.node!r}: {'; '.join(held.notes)}): fp8onnx quantizes float32 models, so give "
                        f"it the float32 model (FP8 weights replace {held.precision.lower()} ones anyway)")


def _check(model: onnx.ModelProto) -> None:
    from .runtime import ops

    ops.register_onnx_schemas()
    if model.ByteSize() < 2_000_000_000:
        onnx.checker.check_model(model, full_check=True)
