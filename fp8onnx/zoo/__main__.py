"""``python -m fp8onnx.zoo``: list the zoo, with FP32 metrics, timings and model facts.

    python -m fp8onnx.zoo                    # every entry: status, FP32 metric, times
    python -m fp8onnx.zoo digits_cnn --facts # one entry, with structural facts as JSON
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import ZooSkip, entries, get
from .facts import describe


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fp8onnx.zoo", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="entries to run (default: all)")
    ap.add_argument("-n", type=int, default=None, help="eval samples (default: per entry)")
    ap.add_argument("--facts", action="store_true", help="print model facts as JSON")
    args = ap.parse_args(argv)
    try:
        chosen = [get(n) for n in args.names] if args.names else entries()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for e in chosen:
        try:
            t0 = time.perf_counter()
            model = e.load()
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            metric = e.evaluate(n=args.n)
            t_eval = time.perf_counter() - t0
        except ZooSkip as skip:
            print(f"{e.name:18s} {skip}")
            continue
        n = e.default_eval_n if args.n is None else args.n
        extra = "".join(f" {k}={v:.4f}" for k, v in e.last_details.items())
        print(f"{e.name:18s} {e.domain}/{e.family:11s} {e.metric_name}: {metric:.4f} (n={n}){extra}"
              f"  load {t_load:.2f}s eval {t_eval:.2f}s")
        if args.facts:
            print(json.dumps(describe(model), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
