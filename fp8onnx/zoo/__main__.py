"""``python -m fp8onnx.zoo``: list the zoo, with FP32 metrics, timings and model facts;
with ``--fp8``, compile each entry and print the FP8 metric and relative loss.

    python -m fp8onnx.zoo                        # every entry: status, FP32 metric, times
    python -m fp8onnx.zoo digits_cnn --facts     # one entry, with structural facts as JSON
    python -m fp8onnx.zoo --fp8 --format e3m4    # compile + evaluate every available entry
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..recipe import WEIGHT_CALIB_METHODS, WEIGHT_ROUNDINGS
from . import ZooSkip, entries, get
from .facts import describe


def _details(details: dict) -> str:
    """`` k=v`` for an entry's secondary figures: counts as integers, rates to 4 places."""
    return "".join(f" {k}={v}" if isinstance(v, int) else f" {k}={v:.4f}" for k, v in details.items())


def _fp8_row(e, args) -> str:
    from .fp8eval import fp8_vs_fp32

    opts = {k: v for k, v in (("format", args.format), ("scheme", args.scheme),
                              ("calib_method", args.calib_method),
                              ("weight_calib_method", args.weight_calib),
                              ("weight_rounding", args.weight_rounding),
                              ("keep_first", args.keep_first), ("bn_calib", args.bn_calib),
                              ("pow2_scales", args.pow2_scales),
                              ("underflow_guard", args.underflow_guard)) if v}
    r = fp8_vs_fp32(e, calib_n=args.calib_n, eval_n=args.n, **opts)
    extra = _details(r["details"])
    return (f"{e.name:18s} fp32 {r['fp32']:.4f}  fp8 {r['fp8']:.4f}  relative loss "
            f"{r['relative_loss']:+.4f}{extra}  compile {r['compile_s']:.1f}s eval {r['eval_s']:.1f}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fp8onnx.zoo", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="entries to run (default: all)")
    ap.add_argument("-n", type=int, default=None, help="eval samples (default: per entry)")
    ap.add_argument("--facts", action="store_true", help="print model facts as JSON")
    ap.add_argument("--fp8", action="store_true", help="compile with fp8onnx and compare")
    ap.add_argument("--format", default=None, help="with --fp8: FP8 format (default: compiler's)")
    ap.add_argument("--scheme", default=None, help="with --fp8: operator scheme")
    ap.add_argument("--calib-method", default=None, help="with --fp8: calibration method")
    ap.add_argument("--weight-calib", default=None, choices=list(WEIGHT_CALIB_METHODS),
                    help="with --fp8: weight scale method (default max)")
    ap.add_argument("--weight-rounding", default=None, choices=list(WEIGHT_ROUNDINGS),
                    help="with --fp8: weight rounding (default nearest; gptq: least output error)")
    ap.add_argument("--keep-first", action="store_true",
                    help="with --fp8: first weighted layer in float (the compiler's --keep-first)")
    ap.add_argument("--bn-calib", action="store_true", help="with --fp8: BatchNorm calibration")
    ap.add_argument("--pow2-scales", action="store_true",
                    help="with --fp8: scales rounded up to powers of two (the compiler's --pow2-scales)")
    ap.add_argument("--underflow-guard", type=float, default=None, metavar="G",
                    help="with --fp8: the compiler's --underflow-guard (e.g. 0.05)")
    ap.add_argument("--calib-n", type=int, default=32, help="with --fp8: calibration samples")
    args = ap.parse_args(argv)
    try:
        chosen = [get(n) for n in args.names] if args.names else entries()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for e in chosen:
        try:
            if args.fp8:
                print(_fp8_row(e, args), flush=True)
                continue
            t0 = time.perf_counter()
            model = e.load()
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            metric = e.evaluate(n=args.n)
            t_eval = time.perf_counter() - t0
        except ZooSkip as skip:
            print(f"{e.name:18s} {skip}")
            continue
        except Exception as err:  # a survey goes on past one broken entry, and says so
            print(f"{e.name:18s} FAILED: {type(err).__name__}: {err}", flush=True)
            status = 1
            continue
        n = e.default_eval_n if args.n is None else args.n
        extra = _details(e.last_details)
        print(f"{e.name:18s} {e.domain}/{e.family:11s} {e.metric_name}: {metric:.4f} (n={n}){extra}"
              f"  load {t_load:.2f}s eval {t_eval:.2f}s", flush=True)
        if args.facts:
            print(json.dumps(describe(model), indent=1))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
