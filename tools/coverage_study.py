"""The coverage study: the paper's headline table on the zoo, beside onnxruntime's quantizer.

For every available zoo model: FP32; E5M2, E4M3, E3M4 and INT8 under the standard and
extended schemes, with and without BatchNorm calibration (default range method, max);
the paper's mixed FP8 formats (``e3m4w.e4m3a``: E3M4 weights, E4M3 activations, and the
reverse) under the standard scheme, with and without BatchNorm calibration; a few of these
with least-error weight scales (``-wmse``: ``weight_calib_method="mse"``); accuracy-aware
tuning; and the peer, onnxruntime's ``quantize_static`` to FP8 E4M3 (tools/peer_ort.py). Each
job runs in a fresh process (tools/coverage_worker.py) so its peak RSS is its own;
rows stream to ``<out>/results.jsonl`` as jobs finish; ``coverage.md`` and the PNG
figures are written at the end (tools/coverage_report.py)::

    python tools/coverage_study.py                      # everything, 2 local jobs at a time
    python tools/coverage_study.py --quick --out /tmp/cov   # digits + ppocr_cls, few samples (CI)
    python tools/coverage_study.py --models digits_cnn,minilm_l6 --resume
    python tools/coverage_study.py --resume --rerun e4m3-std,peer   # those jobs again, rows replaced
    python tools/coverage_study.py --ray-address auto   # the same jobs on a Ray cluster
    python tools/coverage_study.py --report-only        # rebuild coverage.md/PNGs from results.jsonl

Our models are emitted as ``ai.fp8onnx`` custom ops (``emit="emulate"``) and run by
``fp8onnx.runtime``: exact and fast on a CPU for every format, E3M4 included.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
# Sibling scripts are loaded by file path and tools/ leaves sys.path, so no script here
# can shadow an installed package (Numba imports ``coverage``, for one).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TOOLS]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _sibling(name: str):
    """Import tools/<name>.py under the name ``fp8onnx_tools_<name>``."""
    import importlib.util

    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]

__all__ = ["FORMATS", "MIXED", "WMSE", "KF", "SCHEMES", "format_token", "parse_format", "QUICK_MODELS", "plan_jobs", "launch", "run_sweep", "read_rows",
           "job_key", "main"]

FORMATS = ("e5m2", "e4m3", "e3m4", "int8")
#: Formats the accuracy-aware tuning setting runs from (E5M2 is nobody's inference format).
TUNED_FORMATS = ("e4m3", "e3m4", "int8")
TUNE_TRIALS = 100  # Intel Neural Compressor's default max_trials
#: ``-tuned-recipes``: fp8onnx.tune as it runs by default for FP8, its whole-recipe stage first
#: (the base format hardly matters then: the candidates set their own formats).
RECIPE_TUNED_FORMATS = ("e4m3",)
#: Mixed FP8 formats, (weights, activations): the paper's "mixed FP8 formats"; E3M4 weights
#: with E4M3 activations is the PP-OCR detector's best configuration (tools/bench_ocr_calib.py).
MIXED = (("e3m4", "e4m3"), ("e4m3", "e3m4"))
#: Settings run with least-error weight scales (``weight_calib_method="mse"``), as (weights,
#: activations, BatchNorm calibration), all under the standard scheme: the default format,
#: the paper's CV format, INT8 (so FP8 and INT8 get the same option), the best fixed recipe
#: (E3M4 weights / E4M3 activations) and E3M4 with BN calibration, which measures the clipped
#: weights. Max scaling stays the default everywhere else (MSE cost ppocr_cls 2 of 32 lines).
WMSE = (("e4m3", "e4m3", False), ("e3m4", "e3m4", False), ("int8", "int8", False),
        ("e3m4", "e4m3", False), ("e3m4", "e3m4", True))
#: Settings run with the first weighted layer in float (``-kf``: ``keep_first=True``), as
#: (weights, activations, suffix before -kf): the layer reading raw pixels loses most under a
#: 3-4 bit mantissa (YOLOv8n E3M4 box agreement 0.83 -> 0.97). The default format, the CV
#: format, INT8, and E3M4 with least-error weight scales.
KF = (("e4m3", "e4m3", ""), ("e3m4", "e3m4", ""), ("int8", "int8", ""), ("e3m4", "e3m4", "-wmse"))
#: Settings run with power-of-two scales (``-pow2``: ``pow2_scales=True``), as hardware that
#: takes the scale as an exponent bias needs (Intel Gaudi): what that constraint costs, for
#: the default format and the CV format. A constraint, not a way to gain accuracy, so the
#: report keeps it out of the best-of counts.
POW2_FORMATS = ("e4m3", "e3m4")
#: Settings run with the underflow guard (``-ug``: ``underflow_guard=UNDERFLOW_GUARD``), as
#: (format, suffix before -ug): E3M4 alone, its two best fixed recipes and the two together. The guard moves
#: activations that E3M4 flushes to zero far more often than E4M3 to E4M3; on E4M3 it does nothing.
UG = (("e3m4", ""), ("e3m4", "-wmse-kf"), ("e3m4", "-bn-wmse"), ("e3m4", "-bn-wmse-kf"))
UNDERFLOW_GUARD = 0.05
#: Settings run with GPTQ weight rounding (``-gq``: ``weight_rounding="gptq"``), as (format,
#: suffix before -gq, suffix after): the default format, the CV format and INT8 with max
#: scales, and the two best fixed recipes of nearest rounding with GPTQ in them.
GQ = (("e4m3", "", ""), ("e3m4", "", ""), ("int8", "", ""), ("e3m4", "-wmse", "-kf-ug"),
      ("e3m4", "-bn-wmse", "-ug"))
#: Settings run with whole-model BatchNorm calibration (``-ba``: ``bn_calib`` with
#: ``bn_activations``, the FP8 side measured with its activations quantized), as (format,
#: suffix after -ba): the default format, the CV format, and E3M4's best fixed recipes.
BA = (("e4m3", ""), ("e3m4", ""), ("e3m4", "-wmse"), ("e3m4", "-wmse-ug"))
SCHEMES = {"standard": "std", "extended": "ext"}
PEERS = {"peer": "default", "peer-sym": "sym"}
QUICK_MODELS = ("digits_cnn", "digits_mlp", "ppocr_cls")
QUICK_SAMPLES = (16, 64)  # calibration, evaluation samples for --quick


def format_token(weights: str, activations: str) -> str:
    """The format part of a configuration name: ``e4m3`` when both agree, else
    ``e3m4w.e4m3a`` (weights first, each part tagged, so the name reads the same both ways)."""
    return weights if weights == activations else f"{weights}w.{activations}a"


def parse_format(token: str) -> tuple:
    """``"e4m3"`` -> ("e4m3", "e4m3"); ``"e3m4w.e4m3a"`` -> ("e3m4", "e4m3"). Format names are
    checked by the compiler (an unknown one is a failed row), the shape of the token here."""
    if "." not in token:
        return token, token
    w, _, a = token.partition(".")
    if not (w.endswith("w") and a.endswith("a") and len(w) > 1 and len(a) > 1 and "." not in a):
        raise ValueError(f"mixed format {token!r}: write WEIGHTSw.ACTIVATIONSa, e.g. e3m4w.e4m3a")
    return w[:-1], a[:-1]


def config_names(with_peer: bool = True) -> List[str]:
    """Every configuration name, in report order: fp32, ours (fmt-scheme[-bn]), mixed formats
    (Ww.Aa-std[-bn]), least-error weight scales (fmt-std[-bn]-wmse), ours tuned
    (fmt-std-tuned), peers."""
    names = ["fp32"]
    for scheme in SCHEMES.values():
        for bn in ("", "-bn"):
            names += [f"{fmt}-{scheme}{bn}" for fmt in FORMATS]
    for bn in ("", "-bn"):
        names += [f"{format_token(w, a)}-std{bn}" for w, a in MIXED]
    names += [f"{format_token(w, a)}-std{'-bn' if bn else ''}-wmse" for w, a, bn in WMSE]
    names += [f"{format_token(w, a)}-std{suffix}-kf" for w, a, suffix in KF]
    names += [f"{fmt}-std{suffix}-ug" for fmt, suffix in UG]
    names += [f"{fmt}-std{before}-gq{after}" for fmt, before, after in GQ]
    names += [f"{fmt}-std-ba{after}" for fmt, after in BA]
    names += [f"{fmt}-std-pow2" for fmt in POW2_FORMATS]
    names += [f"{fmt}-std-tuned" for fmt in TUNED_FORMATS]
    names += [f"{fmt}-std-tuned-recipes" for fmt in RECIPE_TUNED_FORMATS]
    return names + (list(PEERS) if with_peer else [])


#: The suffixes after FORMAT-SCHEME that config_spec accepts, in this order only.
_SUFFIXES = ((), ("bn",), ("wmse",), ("bn", "wmse"), ("kf",), ("bn", "kf"), ("wmse", "kf"),
             ("bn", "wmse", "kf"), ("ug",), ("wmse", "kf", "ug"), ("bn", "wmse", "ug"), ("bn", "wmse", "kf", "ug"),
             ("gq",), ("wmse", "gq", "kf", "ug"), ("bn", "wmse", "gq", "ug"),
             ("ba",), ("ba", "wmse"), ("ba", "wmse", "ug"),
             ("pow2",),
             ("tuned",), ("tuned", "recipes"))


def config_spec(config: str) -> dict:
    """The job fields that a configuration name stands for: ``FORMAT-SCHEME[-bn|-ba][-wmse][-gq][-kf][-ug]``
    (``-ba``: BN calibration measured on the whole FP8 model; ``-wmse``: least-error weight scales; ``-gq``: GPTQ weight rounding; ``-kf``: first
    weighted layer in float; ``-ug``: the underflow guard),
    ``FORMAT-SCHEME-pow2`` (power-of-two scales) or
    ``FORMAT-SCHEME-tuned[-recipes]`` (``-recipes``: fp8onnx.tune's whole-recipe stage first),
    fp32 and the peers."""
    if config == "fp32":
        return {"kind": "fp32"}
    if config in PEERS:
        return {"kind": "peer", "peer_variant": PEERS[config]}
    parts = config.split("-")
    scheme = {v: k for k, v in SCHEMES.items()}.get(parts[1] if len(parts) > 1 else "")
    flags = tuple(parts[2:])
    if scheme is None or flags not in _SUFFIXES:
        raise ValueError(f"unknown configuration {config!r}: use fp32, peer, peer-sym or "
                         "FORMAT-std|ext[-bn|-ba][-wmse][-gq][-kf][-ug], FORMAT-std|ext-pow2 or FORMAT-std|ext-tuned[-recipes] "
                         "(FORMAT: e4m3, or e3m4w.e4m3a for mixed formats; -wmse: least-error weight scales; "
                         "-gq: GPTQ weight rounding; -ba: BN calibration with FP8 activations)")
    w, a = parse_format(parts[0])
    fmt = {"format": w} if w == a else {"weight_format": w, "activation_format": a}
    if flags[:1] == ("tuned",):
        if w != a:
            raise ValueError(f"configuration {config!r}: tuning starts from one format (it tries "
                             "mixed formats per op type itself)")
        spec = {"kind": "tuned", **fmt, "scheme": scheme, "bn_calib": False,
                "max_trials": TUNE_TRIALS, "target_loss": 0.01}
        if "recipes" in flags:  # absent = the INC-style stages, so older specs read the same
            spec["stages"] = ["recipe", "format", "node"]
        return spec
    spec = {"kind": "ours", **fmt, "scheme": scheme, "bn_calib": "bn" in flags or "ba" in flags}
    if "ba" in flags:  # absent = BN calibration under FP8 weights only, so older specs read the same
        spec["bn_activations"] = True
    if "wmse" in flags:  # absent = the compiler's default (max), so older specs read the same
        spec["weight_calib_method"] = "mse"
    if "gq" in flags:  # absent = nearest rounding, the compiler's default
        spec["weight_rounding"] = "gptq"
    if "kf" in flags:
        spec["keep_first"] = True
    if "pow2" in flags:
        spec["pow2_scales"] = True
    if "ug" in flags:
        spec["underflow_guard"] = UNDERFLOW_GUARD
    return spec


def job_key(row: dict) -> tuple:
    return row["model"], row["config"]


def read_rows(path: Path) -> List[dict]:
    """Rows of a results.jsonl; a torn last line (a killed sweep) is ignored."""
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _per_model(text: Optional[str], default: Optional[int]):
    """``"64"`` -> 64; ``"ppocr_cls=128,mobilenet_v2=60"`` -> a dict (others: ``default``)."""
    if not text:
        return default
    if "=" not in text:
        return int(text)
    out = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        if not n.strip().isdigit():
            raise ValueError(f"--eval-samples {text!r}: write N or MODEL=N,MODEL=N")
        out[name.strip()] = int(n)
    out[None] = default
    return out


def plan_jobs(entries: Iterable, configs: List[str], *, calib_samples: Optional[int] = None,
              eval_samples=None, mem_limit_gb: float = 8.0):
    """(job specs, skip rows): one spec per available entry and config; a
    ``"skipped: install X"`` row per unavailable entry (never silently missing)."""
    from fp8onnx.zoo import ZooSkip

    specs, skipped = [], []
    for e in entries:
        try:
            e.check_available()
        except ZooSkip as skip:
            for c in configs:
                skipped.append({"model": e.name, "config": c, "kind": config_spec(c)["kind"],
                                "domain": e.domain, "family": e.family, "status": str(skip)})
            continue
        n_eval = eval_samples.get(e.name, eval_samples[None]) if isinstance(eval_samples, dict) else eval_samples
        for c in configs:
            spec = {"model": e.name, "config": c, "domain": e.domain, "family": e.family,
                    "calib_samples": calib_samples, "eval_samples": n_eval,
                    "mem_limit_gb": mem_limit_gb, **config_spec(c)}
            specs.append(spec)
    return specs, skipped


def launch(spec: dict, timeout: float = 3600.0) -> dict:
    """Run one job in a fresh Python process; always returns a row (failures included)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    base = {k: spec[k] for k in ("model", "config", "kind")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(TOOLS / "coverage_worker.py"), json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"failed: timeout after {timeout:.0f} s", "job_s": time.perf_counter() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    reason = "killed (out of memory?)" if proc.returncode < 0 else f"exit code {proc.returncode}"
    return {**base, "status": f"failed: {reason}: {tail}", "job_s": time.perf_counter() - t0}


def _ray_runner(address: str, timeout: float):
    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    # Ship launch() by value: loaded from tools/ by file path (or as __main__), its module
    # is not importable on Ray's workers.
    module = sys.modules.get(launch.__module__)
    if module is not None and module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(module)
    remote = ray.remote(num_cpus=1)(launch)

    def run(specs, on_row):
        pending = {remote.remote(s, timeout): s for s in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker is one failed job
                    row = {k: spec[k] for k in ("model", "config", "kind")}
                    row["status"] = f"failed: ray: {type(e).__name__}: {e}"
                on_row(spec, row)
    return run


def _local_runner(jobs: int, timeout: float, launcher: Callable):
    def run(specs, on_row):
        # Threads only wait on subprocesses: each job is its own process (own peak RSS).
        with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(launcher, s, timeout): s for s in specs}
            for fut in cf.as_completed(futures):
                spec = futures[fut]
                try:
                    row = fut.result()
                except Exception as e:  # noqa: BLE001
                    row = {k: spec[k] for k in ("model", "config", "kind")}
                    row["status"] = f"failed: launcher: {type(e).__name__}: {e}"
                on_row(spec, row)
    return run


def _priority(spec: dict) -> float:
    """Run order: standard scheme and the peer for every model first, then extended, then
    BatchNorm calibration, so a sweep cut short still covers every model (stable sort);
    least-error weight scales right after the same setting with max scaling."""
    if spec["kind"] != "ours":
        return 0
    return ({("standard", False): 0, ("extended", False): 1, ("standard", True): 2,
             ("extended", True): 3}[(spec["scheme"], bool(spec.get("bn_calib")))]
            + 0.5 * (spec.get("weight_calib_method", "max") != "max"))


def run_sweep(specs: List[dict], skipped: List[dict], out: Path, *, resume: bool = False,
              jobs: int = 2, timeout: float = 3600.0, ray_address: Optional[str] = None,
              launcher: Callable = launch, retry_failed: bool = False, rerun: Iterable[str] = (),
              log=print) -> List[dict]:
    """Run the jobs not yet in ``out/results.jsonl`` (with ``resume``), FP32 first so every
    quantized row carries its relative loss; returns the rows launched this time. With
    ``resume``, configurations in ``rerun`` run again even where rows exist (the newer row
    is the one the report reads), e.g. to measure a figure older rows lack."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    old = read_rows(path) if resume else []
    if not resume and path.exists():
        path.unlink()
    rerun = set(rerun)
    done = {job_key(r): r for r in old
            if not (retry_failed and str(r.get("status", "")).startswith("failed")) and r["config"] not in rerun}
    lock = threading.Lock()
    launched: List[dict] = []

    def write(row):
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=float) + "\n")

    for row in skipped:
        if job_key(row) not in done:
            write(row)
            done[job_key(row)] = row
    todo = [s for s in specs if job_key(s) not in done]
    log(f"coverage: {len(specs)} jobs, {len(specs) - len(todo)} already in {path}, {len(todo)} to run")
    runner = _ray_runner(ray_address, timeout) if ray_address else _local_runner(jobs, timeout, launcher)
    t_start = time.perf_counter()

    def on_row(spec, row):
        row.setdefault("domain", spec.get("domain"))
        row.setdefault("family", spec.get("family"))
        launched.append(row)
        write(row)
        loss = row.get("relative_loss")
        log(f"[{len(launched)}/{len(todo)} {time.perf_counter() - t_start:6.0f}s] {row['model']:16s} "
            f"{row['config']:12s} {row.get('status')}"
            + (f"  metric {row['metric']:.4f}" if row.get("metric") is not None else "")
            + (f"  loss {loss:+.4f}" if loss is not None else ""))

    fp32_todo = [s for s in todo if s["kind"] == "fp32"]
    runner(fp32_todo, on_row)
    fp32 = {r["model"]: r.get("metric") for r in old + launched
            if r.get("config") == "fp32" and r.get("status") == "ok"}
    rest = [{**s, "fp32_metric": fp32.get(s["model"])} for s in todo if s["kind"] != "fp32"]
    runner(sorted(rest, key=_priority), on_row)
    return launched


def _parse_args(argv):
    ap = argparse.ArgumentParser(prog="python tools/coverage_study.py", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated zoo entries (default: all)")
    ap.add_argument("--configs", default=None,
                    help=f"comma-separated configurations (default: all): {', '.join(config_names())}")
    ap.add_argument("--quick", action="store_true",
                    help=f"{', '.join(QUICK_MODELS)} with {QUICK_SAMPLES[0]} calibration and "
                         f"{QUICK_SAMPLES[1]} evaluation samples (CI)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel local jobs (default 2)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "coverage"), help="output folder")
    ap.add_argument("--resume", action="store_true", help="skip jobs already in results.jsonl")
    ap.add_argument("--retry-failed", action="store_true", help="with --resume: rerun failed jobs")
    ap.add_argument("--rerun", default="",
                    help="with --resume: comma-separated configurations to run again even where rows exist "
                         "(e.g. e4m3-std,peer for the cost table's side-by-side run times)")
    ap.add_argument("--ray-address", default=None, help="run the jobs on this Ray cluster (e.g. auto)")
    ap.add_argument("--calib-samples", type=int, default=None, help="calibration samples (default 32)")
    ap.add_argument("--eval-samples", default=None,
                    help="evaluation samples: N for every model, or MODEL=N,... (default: the entry's)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per job before it fails")
    ap.add_argument("--mem-limit-gb", type=float, default=8.0, help="address-space cap per job (RLIMIT_AS)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from results.jsonl")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    coverage_report = _sibling("coverage_report")
    from fp8onnx import zoo

    if args.ray_address and not args.report_only:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("error: --ray-address needs Ray, which is not installed: install ray (pip install ray)",
                  file=sys.stderr)
            return 2
    if not args.report_only:
        names = args.models.split(",") if args.models else (list(QUICK_MODELS) if args.quick else zoo.names())
        try:
            entries = [zoo.get(n.strip()) for n in names if n.strip()]
            configs = args.configs.split(",") if args.configs else config_names()
            for c in configs:
                config_spec(c)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if "fp32" not in configs:
            configs = ["fp32"] + configs  # relative losses need the FP32 metric
        calib_n = args.calib_samples or (QUICK_SAMPLES[0] if args.quick else None)
        try:
            eval_n = _per_model(args.eval_samples, QUICK_SAMPLES[1] if args.quick else None)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rerun = [c.strip() for c in args.rerun.split(",") if c.strip()]
        unknown = [c for c in rerun if c not in configs]
        if unknown or (rerun and not args.resume):
            print(f"error: --rerun {','.join(unknown or rerun)}: " + (
                "not among the configurations of this sweep (see --configs)" if unknown else
                "needs --resume (without it every job runs anyway, into a fresh results.jsonl)"), file=sys.stderr)
            return 2
        specs, skipped = plan_jobs(entries, configs, calib_samples=calib_n, eval_samples=eval_n,
                                   mem_limit_gb=args.mem_limit_gb)
        run_sweep(specs, skipped, out, resume=args.resume, jobs=args.jobs, timeout=args.timeout,
                  ray_address=args.ray_address, retry_failed=args.retry_failed, rerun=rerun)
    rows = read_rows(out / "results.jsonl")
    if not rows:
        print(f"error: no rows in {out / 'results.jsonl'}: run the sweep first", file=sys.stderr)
        return 2
    text = coverage_report.write_report(rows, out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
