"""Compare the activation range methods (max, percentile, mse, kl) on every zoo model.

    python tools/range_methods.py [--models a,b] [--formats e4m3,e3m4] [--calib 32] > results.jsonl

One JSON line per (model, format, method): relative loss of the entry's task metric
against FP32, and seconds. docs/range_methods.md tabulates a run of it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    if sys.path and sys.path[0].endswith("tools"):
        sys.path.pop(0)  # a script in tools/ must not shadow an installed package
    from fp8onnx import zoo
    from fp8onnx.api import compile_model
    from fp8onnx.evaluation import session_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(zoo.names()))
    p.add_argument("--formats", default="e4m3,e3m4")
    p.add_argument("--calib", type=int, default=32)
    args = p.parse_args()
    for name in args.models.split(","):
        entry = zoo.get(name)
        try:
            model, m32 = entry.load(), entry.evaluate()
        except zoo.ZooSkip as e:
            print(json.dumps({"model": name, "skipped": str(e)}), flush=True)
            continue
        calib = list(entry.calib_feeds(args.calib))
        for fmt in args.formats.split(","):
            for method in ("max", "percentile", "mse", "kl"):
                t = time.time()
                q = compile_model(model, calibration=calib, format=fmt, calib_method=method, emit="emulate").model
                loss = zoo.relative_loss(m32, entry.evaluate(q, session_factory=session_for))
                print(json.dumps({"model": name, "format": fmt, "method": method, "loss": loss,
                                  "s": round(time.time() - t, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
