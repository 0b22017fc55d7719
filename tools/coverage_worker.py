"""One coverage-study job, run in its own process: ``python tools/coverage_worker.py SPEC_JSON``.

A job is one zoo model in one configuration: ``fp32`` (the reference), ``ours`` (fp8onnx
with a format, scheme and optional BatchNorm calibration, emitted as ``ai.fp8onnx``
custom ops and run by ``fp8onnx.runtime``) or ``peer`` (onnxruntime's quantize_static,
see peer_ort.py). The job prints one JSON row as the last line of stdout:

    {"model": "digits_cnn", "config": "e4m3-std", "status": "ok", "metric": 0.9933,
     "relative_loss": 0.0022, "compile_s": 0.41, "compile_peak_rss_mb": 310.2,
     "run_ratio": 1.12, ...}

Peak memory is ``getrusage(RUSAGE_SELF).ru_maxrss`` of this fresh process read right after
the compile (so it is the compile's peak, imports, model and calibration data included);
``base_rss_mb`` is the same figure just before the compile. ``RLIMIT_AS`` caps the process
(``mem_limit_gb``) so a runaway job fails alone. Exceptions become ``"failed: ..."`` rows.
``run_ratio`` is the quantized model's run time over the FP32 model's, both timed in this
job side by side (see ``side_by_side``); ``run_s`` is each row's own median, for scale only.
"""
from __future__ import annotations

import json
import logging
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

__all__ = ["run_job", "side_by_side", "main"]

_TOOLS = Path(__file__).resolve().parent
# keep tools/ off sys.path: a script here must not shadow an installed package (Numba imports coverage).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _TOOLS]


def _sibling(name: str):
    """tools/<name>.py, loaded by file path (once) as ``fp8onnx_tools_<name>``, the way the
    tools load each other."""
    import importlib.util

    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, _TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


_timing = _sibling("_timing")

#: Numba kernels are cached on disk, but the first call in a process still loads them;
#: a tiny warm-up compile keeps that one-off cost out of the timed compile.
_WARMED = False


#: How allocation failures under RLIMIT_AS read when they come back from C++ code.
_OOM_MARKERS = ("Failed to allocate memory", "bad_alloc", "Unable to allocate", "MemoryError")


def _oneline(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_run_s(session, feed, repeat: int = 5) -> float:
    run = _timing.session_call(session, feed, own_inputs=True)  # a specialized model takes fewer inputs
    run()  # warm-up: allocations, lazy kernel loading
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(sessions, feed, *, budget_s: float = 3.0, min_rounds: int = 3, max_rounds: int = 9,
                 clock=time.perf_counter) -> dict:
    """Run time of ``sessions[1]`` relative to ``sessions[0]``, measured side by side.

    Each round times both sessions on the same feed, in alternating order (a session that
    always runs second would inherit the first's cache and thread state); the ratio is the
    median over rounds of the per-round ratio, so load that drifts between rounds (other
    jobs on shared cores) affects both sides of each ratio alike. (Run times from different
    jobs, at different load, read ours as ~3x FP32 on PP-OCR rec/det; tools/bench_runtime.py
    measures 1.03-1.05x side by side.) A sample repeats a run until it lasts about 20 ms;
    rounds fill ``budget_s`` within ``min_rounds``..``max_rounds``, at least 3 rounds of one
    run each on a large model. The rounds themselves are tools/_timing.py's, shared with
    tools/bench_runtime.py (its rotation is this alternation for two sessions).
    Returns {"ratio", "rounds_s": [[s0, s1], ...] (seconds per run), "inner"}.
    """
    if len(sessions) != 2:  # the ratio below is of a pair: say so before timing anything
        raise ValueError(f"side_by_side compares two sessions, got {len(sessions)}")
    # a specialized model takes fewer inputs
    fns = [_timing.session_call(sess, feed, own_inputs=True) for sess in sessions]
    once = []
    for fn in fns:
        fn()  # warm-up: allocations, lazy kernel loading, pre-packing
        t = clock()
        fn()
        once.append(clock() - t)
    inner = _timing.runs_per_sample(min(once), 0.02)
    rounds = int(min(max_rounds, max(min_rounds, budget_s / max(inner * sum(once), 1e-9))))
    times = [[s for (s,) in per] for per in _timing.rotated_rounds(fns, rounds, inner, (clock,))]
    return {"ratio": statistics.median(b / a for a, b in times), "rounds_s": times, "inner": inner}


def _one_thread_session(runtime: str, data: bytes):
    """A session like the row's own (``runtime``: "fp8onnx" = fp8onnx.runtime, "ort" = the
    zoo's onnxruntime session without FP8-unsafe rewrites, "ort-default" = onnxruntime as
    it comes) on one intra-op thread: the ratio is per core, as tools/bench_runtime.py
    measures it, and two jobs sharing the machine's cores disturb it less."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if runtime == "fp8onnx":
        from fp8onnx.runtime import InferenceSession

        return InferenceSession(data, so)
    from fp8onnx.zoo import ORT_FP8_UNSAFE

    unsafe = list(ORT_FP8_UNSAFE) if runtime == "ort" else []
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=unsafe)


def _warm_up() -> float:
    """Compile and run digits_mlp once (E4M3, emulate); returns the seconds it took."""
    global _WARMED
    if _WARMED:
        return 0.0
    from fp8onnx import zoo
    from fp8onnx.api import compile_model
    from fp8onnx.runtime import InferenceSession

    t0 = time.perf_counter()
    e = zoo.get("digits_mlp")
    q = compile_model(e.load(), calibration=list(e.calib_feeds(8)), format="e4m3", emit="emulate").model
    sess = InferenceSession(q.SerializeToString())
    sess.run(None, next(iter(e.eval_feeds(1))))
    _WARMED = True
    return time.perf_counter() - t0


def _api_does_bn_calib() -> bool:
    """Whether fp8onnx.compile_model runs BatchNormCalibration for ``bn_calib=True``.

    The recipe field exists before the API wires the pass in; until then the job runs
    the pass itself, the way tools/bench_bn_calib.py does.
    """
    import inspect

    from fp8onnx import api

    return "BatchNormCalibration" in inspect.getsource(api)


def _formats(spec) -> dict:
    """compile_model's format options: ``format`` or, for mixed formats, both halves."""
    if spec.get("format") is not None:
        return {"format": spec["format"]}
    return {"weight_format": spec["weight_format"], "activation_format": spec["activation_format"]}


def _stored_recipe(model) -> dict:
    """The recipe the compiled model stores in its metadata (read back, so a row shows what
    was compiled, not what was asked)."""
    meta = {p.key: p.value for p in model.metadata_props}
    return json.loads(meta.get("fp8onnx.recipe", "{}"))


def _recipe_formats(model) -> list:
    """[weight format, activation format] as the compiled model's stored recipe says."""
    recipe = _stored_recipe(model)
    return [recipe.get("weight_format"), recipe.get("activation_format")]


def _source_state() -> dict:
    """The commit the job ran on and the library files (fp8onnx/, passes/) that differed from
    it: rows from a shared working tree say what code produced them."""
    import subprocess

    root = _TOOLS.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fp8onnx", "passes"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head or None, "dirty": sorted(ln[3:] for ln in dirty if ln.strip())}


def _compile_ours(entry, calib, spec):
    """(quantized model, how BN calibration ran or None, BN-calibrated layers written)."""
    from fp8onnx.api import compile_model, make_recipe, prepare

    opts = dict(**_formats(spec), scheme=spec["scheme"], emit="emulate",
                calib_method=spec.get("calib_method", "max"), **entry.compile_options)
    if spec.get("weight_calib_method"):  # only when asked: older specs compile as they did
        opts["weight_calib_method"] = spec["weight_calib_method"]
    if spec.get("weight_rounding"):
        opts["weight_rounding"] = spec["weight_rounding"]
    if spec.get("keep_first"):
        opts["keep_first"] = True
    if spec.get("pow2_scales"):
        opts["pow2_scales"] = True
    if spec.get("underflow_guard"):
        opts["underflow_guard"] = spec["underflow_guard"]
    if spec.get("bn_activations"):
        opts["bn_activations"] = True
    model = entry.load()
    if not spec.get("bn_calib"):
        return compile_model(model, calibration=calib, **opts).model, None, None
    if not _api_does_bn_calib():
        from fp8onnx.calibration import open_source
        from fp8onnx.passes.bn_calibrate import BatchNormCalibration
        from fp8onnx.planner import plan_quantization

        work = prepare(model)
        plan = plan_quantization(work, make_recipe(**opts))
        bn = BatchNormCalibration(plan, open_source(calib, work), progress=False)
        work = bn(work).model
        written = sum(bool(c.get("written")) for c in bn.corrections)
        return compile_model(work, calibration=calib, **opts).model, "pass", written
    result = compile_model(model, calibration=calib, bn_calib=True, **opts)
    info = result.report.get("bn_calibration") or {}
    layers = info.get("layers") if isinstance(info, dict) else None
    written = sum(bool(c.get("written")) for c in layers) if isinstance(layers, list) else None
    return result.model, "api", written


def _tune_ours(entry, calib, spec, n):
    """(tuned model, tuning figures): the paper's accuracy-driven fallback (as Intel Neural
    Compressor runs it) scored with the entry's own task metric on its *calibration* split,
    so the held-out split the row reports was never seen while choosing."""
    from fp8onnx import tune
    from fp8onnx.api import make_recipe
    from fp8onnx.evaluation import tensor_map
    from fp8onnx.planner import plan_quantization
    from fp8onnx.zoo.fp8eval import session_for

    def score(model):
        return entry.evaluate(model, n=n, split="calib", session_factory=session_for(model))

    r = tune(entry.load(), calib, calib, score=score, target_loss=spec.get("target_loss", 0.01),
             max_trials=spec.get("max_trials", 24),
             # INT8 falls back to float only, as INT8 tuning does; FP8 may also mix FP8 formats
             # per op type (the paper's mixed formats).
             stages=("node",) if spec["format"] == "int8" else tuple(spec.get("stages", ("format", "node"))),
             base_recipe={"format": spec["format"], "scheme": spec["scheme"]}, emit="emulate",
             **entry.compile_options)
    base = plan_quantization(_specialized(entry), make_recipe(format=spec["format"], scheme=spec["scheme"]))
    n_weights = sum(1 for t in tensor_map(r.model).values() if t.get("kind") == "weight")
    return r.model, {"trials": len(r.history), "met_on_calib": r.met_target, "calib_loss": r.loss,
                     "op_types": r.recipe.op_types, "nodes_float": sorted(r.recipe.nodes),
                     # what the whole-recipe stage chose (the base's values where it kept the base)
                     "recipe": {k: getattr(r.recipe, k) for k in ("weight_format", "activation_format",
                                                                  "weight_calib_method", "keep_first", "bn_calib",
                                                                  "underflow_guard")},
                     "weights_fp8": n_weights, "weights_fp8_untuned": len({u.tensor for d in base.units
                                                                          for u in d.weight_uses}),
                     "tune_s": r.seconds}


def _specialized(entry):
    """The entry's FP32 model as the compiler prepares it, its deployment inputs fixed."""
    from fp8onnx.api import prepare

    return prepare(entry.load(), fix_inputs=entry.compile_options.get("fix_inputs"))


def run_job(spec: dict) -> dict:
    """Run one job in this process and return its row (raises on failure)."""
    from fp8onnx import zoo
    from fp8onnx.zoo.fp8eval import session_for

    row = {"warmup_s": None}
    entry = zoo.get(spec["model"])
    entry.check_available()
    kind = spec["kind"]
    calib_n, eval_n = spec.get("calib_samples"), spec.get("eval_samples")
    eval_n = eval_n or entry.default_eval_n
    fp32 = entry.load()
    row["fp32_size_bytes"] = fp32.ByteSize()
    eval_feed = next(iter(entry.eval_feeds(1)))

    if kind == "fp32":
        data, factory = fp32.SerializeToString(), zoo.ort_session
    else:
        calib = list(entry.calib_feeds(calib_n or 32))
        if kind in ("ours", "tuned"):
            row["warmup_s"] = _warm_up()
        row["base_rss_mb"] = _rss_mb()
        t0 = time.perf_counter()
        if kind == "ours":
            q, via, layers = _compile_ours(entry, calib, spec)
            row["compile_s"] = time.perf_counter() - t0
            row["compile_peak_rss_mb"] = _rss_mb()
            row["recipe_formats"] = _recipe_formats(q)
            row["recipe_weight_calib"] = _stored_recipe(q).get("weight_calib_method")
            if spec.get("weight_rounding"):
                row["recipe_weight_rounding"] = _stored_recipe(q).get("weight_rounding")
            data, factory = q.SerializeToString(), session_for(q)
            runtime = "fp8onnx" if factory is not zoo.ort_session else "ort"
            if spec.get("bn_calib"):
                row["bn_calib_via"], row["bn_calib_layers"] = via, layers
        elif kind == "tuned":
            q, row["tune"] = _tune_ours(entry, calib, spec, eval_n)
            row["compile_s"] = time.perf_counter() - t0
            row["compile_peak_rss_mb"] = _rss_mb()
            data, factory = q.SerializeToString(), session_for(q)
            runtime = "fp8onnx" if factory is not zoo.ort_session else "ort"
        elif kind == "peer":
            peer_ort = _sibling("peer_ort")

            notes = []
            data = peer_ort.quantize_peer(fp32, calib, variant=spec.get("peer_variant", "default"), notes=notes)
            row["peer_calib_note"] = "; ".join(notes)
            row["compile_s"] = time.perf_counter() - t0
            row["compile_peak_rss_mb"] = _rss_mb()
            factory, runtime = peer_ort.default_session, "ort-default"
            # The two sessions fail independently (onnxruntime's default one can refuse the
            # peer's own model): each gets its metric or its error.
            try:
                row["metric_safe"] = entry.evaluate(data, n=eval_n, session_factory=peer_ort.safe_session)
            except Exception as e:  # noqa: BLE001
                row["metric_safe"], row["safe_session_error"] = None, _oneline(e)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    row["size_bytes"] = len(data)
    t0 = time.perf_counter()
    try:
        row["metric"] = entry.evaluate(data, n=eval_n, session_factory=factory)
    except Exception as e:  # noqa: BLE001
        if kind != "peer" or row.get("metric_safe") is None:
            raise
        row["metric"], row["default_session_error"] = None, _oneline(e)
        factory, runtime = peer_ort.safe_session, "ort"
    row["eval_s"] = time.perf_counter() - t0
    row["details"] = dict(entry.last_details)
    row["run_s"] = _median_run_s(factory(data), eval_feed)
    row["peak_rss_mb"] = _rss_mb()
    if kind != "fp32":
        # After the peak RSS reading: the two extra sessions are not the job's footprint.
        try:
            sbs = side_by_side([_one_thread_session("ort", fp32.SerializeToString()),
                                _one_thread_session(runtime, data)], eval_feed)
            row["run_ratio"] = sbs["ratio"]
            row["run_side_by_side"] = {"threads": 1, "inner": sbs["inner"], "rounds_s": sbs["rounds_s"]}
        except Exception as e:  # noqa: BLE001 - a timing failure must not cost the row
            row["run_ratio"], row["run_ratio_error"] = None, _oneline(e)
    row["eval_samples"], row["calib_samples"] = eval_n, (None if kind == "fp32" else calib_n or 32)
    ref = spec.get("fp32_metric")
    if ref:
        if row["metric"] is not None:
            row["relative_loss"] = zoo.relative_loss(ref, row["metric"])
        if row.get("metric_safe") is not None:
            row["relative_loss_safe"] = zoo.relative_loss(ref, row["metric_safe"])
    return row


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    limit = spec.get("mem_limit_gb")
    if limit:
        nbytes = int(float(limit) * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))
    out = {"model": spec["model"], "config": spec["config"], "kind": spec["kind"], "source": _source_state()}
    t0 = time.perf_counter()
    try:
        out.update(run_job(spec))
        out["status"] = "ok"
    except MemoryError:
        out["status"] = f"failed: out of memory (RLIMIT_AS {limit} GB)"
    except Exception as e:  # noqa: BLE001 - any failure becomes a row, the sweep goes on
        from fp8onnx.zoo import ZooSkip

        text = " ".join(str(e).split())
        if isinstance(e, ZooSkip):
            out["status"] = text
        elif any(k in text for k in _OOM_MARKERS):
            out["status"] = f"failed: out of memory (RLIMIT_AS {limit} GB): {type(e).__name__}: {text[-200:]}"
        else:
            out["status"] = f"failed: {type(e).__name__}: {text[:400]}"
        out["traceback"] = traceback.format_exc()[-2000:]
    out["job_s"] = time.perf_counter() - t0
    sys.stdout.write("\n" + json.dumps(out, default=float) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
