"""Benchmark: fp8onnx's fake-quant kernels beside onnxruntime, ml_dtypes and a numpy copy.

On N float32 elements (default 16M, drawn from N(0, 1)), for each format, per tensor and
per channel (a (4096, N/4096) matrix, axis 0, like a weight's output channels), on one
thread and on all threads, the median ns/element of:

* ours:      fp8onnx.kernels.fake_quant (out= preallocated)
* ORT:       onnxruntime's QuantizeLinear -> DequantizeLinear session (opset 21, output
             bound to a preallocated buffer; intra_op_num_threads = the thread count)
* ml_dtypes: (x / s).astype(fp8).astype(float32) * s (numpy and ml_dtypes have no
             threading; for int8, numpy's clip(rint(x / s)) * s; ml_dtypes' float8_e3m4
             is an IEEE-style cousin of the paper's E3M4, timed as the same kind of cast)
* copy:      np.copyto into a preallocated array: the memory-bandwidth floor

Ratios: ORT / ours, ml_dtypes / ours, ours / copy. Usage::

    python tools/bench_kernels.py [--size 16777216] [--reps 9] [--threads 1 2]
    python tools/bench_kernels.py --activation-sizes [--formats e3m4]

``--activation-sizes`` instead asks where an emulated CNN's FakeQuant time goes: in
place, on one thread, at the sizes of MobileNetV2's activations (75K-1.2M elements,
cache-resident or nearly), the serial loops called directly (no wrapper), side by side:

* old:  a calibrated scale with the dividing loop (every element x / scale, as
        onnxruntime's QuantizeLinear; ``_cast._fake_quant_tensor_divide``)
* new:  the same scale with the shipped loop (x * (1/scale) in blocks, a block redone
        dividing when an element is near a rounding midpoint; see ``_cast``)
* pow2: a power-of-two scale (multiplies by the exact reciprocal: ``--pow2-scales``)
* pass: an in-place ``x *= 1``, the floor of any read-modify-write loop

with the medians of the per-round ratios (each round times all four back to back).
Compare the vector widths the JIT may use with ``NUMBA_CPU_FEATURES`` (e.g. the host's
features plus ``-prefer-256-bit`` on AVX-512).

(OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some processors here, do not affect these
loops: none of them calls BLAS.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

# Replace the script's own folder on sys.path by the repository root: tools/ holds a
# script that would shadow an installed package numba imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from fp8onnx import formats, kernels  # noqa: E402

ML_TYPES = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2", "e3m4": "float8_e3m4",
            "e4m3fnuz": "float8_e4m3fnuz", "e5m2fnuz": "float8_e5m2fnuz"}


def interleaved_times(fns, reps, before=None):
    """Seconds per call of each callable, ``reps`` rounds, timed round-robin so that all of
    them see the same machine load (this machine is shared: run-to-run noise is large).
    ``before``, if given, runs untimed before every call."""
    for fn in fns.values():
        fn()  # warm-up (and first-use compilation / cache load)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def median_ns(times, n):
    """Median ns/element of each callable's per-call seconds (from interleaved_times)."""
    return {k: statistics.median(v) / n * 1e9 for k, v in times.items()}


def interleaved_ns(fns, n, reps):
    """Median ns/element of each callable (see interleaved_times)."""
    return median_ns(interleaved_times(fns, reps), n)


def median_ratio(times, a, b):
    """Median over rounds of time a / time b (a ratio within a round shares its load)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def ort_runner(fmt, x, scale, axis, threads):
    """A callable running ORT's Q->DQ on x with the output bound to a fixed buffer."""
    import onnxruntime as ort

    from fp8onnx.kernels.reference import build_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    model = build_model(fmt, "qdq", axis=axis, rank=x.ndim,
                        channels=None if axis is None else x.shape[axis])
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = np.empty_like(x)
    scale_arr = np.array(scale, np.float32)  # kept alive by the closure: ORT holds a pointer
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_cpu_input("scale", scale_arr)
    binding.bind_output("y", "cpu", element_type=np.float32, shape=out.shape,
                        buffer_ptr=out.ctypes.data)

    def run(keep=(x, out, scale_arr)):
        sess.run_with_iobinding(binding)

    run()
    ref = kernels.fake_quant(fmt, x, scale, axis=axis)
    if not np.array_equal(out.view(np.uint32), ref.view(np.uint32)):
        raise SystemExit(f"ORT and fp8onnx disagree on {fmt.name} axis={axis}: not benchmarking")
    return run


def ml_runner(fmt, x, scale, axis):
    import ml_dtypes

    s = np.asarray(scale, np.float32)
    if axis is not None:
        s = s.reshape([-1] + [1] * (x.ndim - 1 - axis)) if axis == 0 else s
    if fmt.kind == "int":
        return lambda: np.clip(np.rint(x / s), -128, 127) * s
    t = getattr(ml_dtypes, ML_TYPES[fmt.name])
    return lambda: (x / s).astype(t).astype(np.float32) * s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1 << 24)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--formats", nargs="+", default=list(formats.FORMATS))
    ap.add_argument("--activation-sizes", action="store_true",
                    help="in-place fake-quant at activation sizes: dividing vs shipped loop vs "
                         "power-of-two scale vs x *= 1")
    args = ap.parse_args(argv)
    if args.activation_sizes:
        return activation_sizes(args.formats, max(args.reps, 51))

    import numba

    n = args.size - args.size % 4096
    x = np.random.default_rng(0).normal(0, 1, n).astype(np.float32)
    x2 = x.reshape(4096, -1)
    out = np.empty_like(x)
    out2 = out.reshape(x2.shape)
    rows = []
    for threads in sorted(set(args.threads)):
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        for name in args.formats:
            f = formats.get(name)
            for scheme in ("tensor", "channel"):
                if scheme == "tensor":
                    xx, oo, axis = x, out, None
                    scale = f.scale_for(kernels.amax(x))
                else:
                    xx, oo, axis = x2, out2, 0
                    scale = f.scale_for(np.maximum(kernels.amax(x2, axis=0), 1e-6))
                fns = {"ours": lambda: kernels.fake_quant(f, xx, scale, axis=axis, out=oo)}
                if f.onnx_type is not None:
                    fns["ort"] = ort_runner(f, xx, scale, axis, threads)
                fns["ml"] = ml_runner(f, xx, scale, axis)
                fns["copy"] = lambda: np.copyto(out, x)
                t = interleaved_ns(fns, n, args.reps)
                rows.append((name, scheme, threads, t["ours"], t.get("ort", float("nan")),
                             t["ml"], t["copy"]))
                print(f"  measured {name:9s} {scheme:7s} threads={threads}: {t['ours']:.3f} ns/el",
                      file=sys.stderr, flush=True)

    print(f"\nfake_quant on {n} float32 elements, median of {args.reps} interleaved runs, "
          f"ns/element; ml_dtypes and copy are single-threaded in every row\n")
    hdr = ("| format | scales | threads | ours | ORT Q->DQ | ml_dtypes | copy | "
           "ORT/ours | ml_dtypes/ours | ours/copy |")
    print(hdr)
    print("|" + "---|" * 10)
    for name, scheme, th, ours, o, m, c in rows:
        ort_s = "n/a" if np.isnan(o) else f"{o:.3f}"
        ort_r = "n/a" if np.isnan(o) else f"{o / ours:.1f}x"
        print(f"| {name} | {scheme} | {th} | {ours:.3f} | {ort_s} | {m:.3f} | {c:.3f} | "
              f"{ort_r} | {m / ours:.1f}x | {ours / c:.2f} |")


def activation_sizes(names, reps):
    """In-place ns/element on one thread: dividing loop, shipped loop, power-of-two scale,
    ``x *= 1``; and the medians of the per-round ratios."""
    import numba

    from fp8onnx.kernels import _cast

    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"in-place fake_quant per tensor, one thread, {reps} interleaved rounds: median "
          "ns/element and median per-round ratios\n")
    print("| format | elements | old: divides | new: multiplies, checked | pow2 scale | x *= 1 | "
          "new / old | pow2 / old | new / pow2 | old / x*=1 |")
    print("|" + "---|" * 10)
    for name in names:
        f = formats.get(name)
        for n in (75_264, 401_408, 1_204_224):  # 28x28x96, 112x112x32, 112x112x96
            y0 = (rng.standard_normal(n) * 3).astype(np.float32)
            y = y0.copy()
            exact = np.float32(f.scale_for(np.float32(11.3)))  # calibrated: not a power of two
            pow2 = np.float32(2.0 ** np.ceil(np.log2(exact)))
            k = f.kernel_id
            # Each call gets fresh activations (copied in untimed, so also cache-warm, as
            # after the layer that wrote them): the new loop's work depends on the values.
            t = interleaved_times({
                "old": lambda: _cast._fake_quant_tensor_divide(y, exact, True, k, y),
                "new": lambda: _cast.fake_quant_tensor(y, exact, True, k, y),
                "pow2": lambda: _cast.fake_quant_tensor(y, pow2, True, k, y),
                "pass": lambda: np.multiply(y, np.float32(1.0), out=y),
            }, reps, before=lambda: np.copyto(y, y0))
            ns = median_ns(t, n)
            print(f"| {name} | {n} | {ns['old']:.3f} | {ns['new']:.3f} | {ns['pow2']:.3f} | "
                  f"{ns['pass']:.3f} | {median_ratio(t, 'new', 'old'):.3f} | "
                  f"{median_ratio(t, 'pow2', 'old'):.3f} | {median_ratio(t, 'new', 'pow2'):.3f} | "
                  f"{median_ratio(t, 'old', 'pass'):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    main()
