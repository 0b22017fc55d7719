"""tools/bench_ocr_calib.py's child processes: each quantizer runs in a fresh one, measured.

A child is ``python tools/bench_ocr_calib.py --child KIND ARGS...`` (the script's hidden
option calls ``run_child``), so every tool starts from the same interpreter state the
benchmark script itself has. Kinds:

* ``ours``: ``fp8onnx.compile``'s ``main`` with ARGS (``det.onnx -o q.onnx --calib DIR FLAGS``);
* ``ort-pre``: onnxruntime's ``quant_pre_process`` SRC DST;
* ``ort``: onnxruntime's ``quantize_static`` SRC DST CALIB_DIR, FP8 E4M3 QDQ with the
  Distribution method, reading the calibration .npz files one per ``get_next()``.

The child prints one JSON line (the tool's own seconds and its VmHWM, read before it
exits, so the parent's memory is not counted); ``measure`` adds wall time from start to
exit, exit status, and, when the child died, ``ru_maxrss`` from ``os.wait4`` and the tail
of its stderr. Only stdlib and numpy are imported here at load: the children load this
module too, and their peak memory is a reported figure.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["vmhwm_mb", "run_child", "measure", "mem_available"]

#: The script a child runs (its ``--child`` option leads to ``run_child``).
SCRIPT = str(Path(__file__).with_name("bench_ocr_calib.py"))


def vmhwm_mb() -> float:
    """This process's peak resident set so far (VmHWM), MB."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


def run_child(kind: str, args: list) -> None:
    """Runs in a fresh process; prints one JSON line: tool seconds and VmHWM."""
    if kind == "ours":
        from fp8onnx.compile import main as compile_main

        t = time.perf_counter()
        rc = compile_main(args)
        if rc:
            raise SystemExit(rc)
    elif kind == "ort-pre":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        t = time.perf_counter()
        # The default (symbolic shape inference on) fails on this model with "Incomplete
        # symbolic shape inference"; the documented switch for non-transformer models:
        quant_pre_process(args[0], args[1], skip_symbolic_shape=True)
    elif kind == "ort":
        src, dst, calib_dir = args
        import onnxruntime.quantization as oq

        class NpzReader(oq.CalibrationDataReader):
            """One .npz feed per get_next(): what a user writes for a folder of images."""

            def __init__(self, folder):
                self.files = sorted(Path(folder).glob("*.npz"))
                self.it = iter(self.files)

            def get_next(self):
                f = next(self.it, None)
                return None if f is None else dict(np.load(f))

            def rewind(self):
                self.it = iter(self.files)

        t = time.perf_counter()
        oq.quantize_static(src, dst, NpzReader(calib_dir), quant_format=oq.QuantFormat.QDQ,
                           activation_type=oq.QuantType.QFLOAT8E4M3FN,
                           weight_type=oq.QuantType.QFLOAT8E4M3FN,
                           calibrate_method=oq.CalibrationMethod.Distribution)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    print(json.dumps({"tool_s": time.perf_counter() - t, "vmhwm_mb": vmhwm_mb()}))


def measure(kind: str, args: list, *, timeout: float, mem_limit: int = 0) -> dict:
    """Run one child; wall time, peak RSS, exit status, the tail of stderr on failure.

    ``mem_limit`` (bytes, 0 = none) is the child's RLIMIT_AS; after ``timeout`` seconds
    the child is killed.
    """
    cmd = [sys.executable, SCRIPT, "--child", kind, *args]

    def limit():
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=limit)
        timed_out = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t > timeout:
                p.kill()
                timed_out = True
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    res = {"wall_s": wall, "rc": p.returncode, "timed_out": timed_out,
           "peak_mb": ru.ru_maxrss / 1024, "peak_from": "ru_maxrss"}
    last = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    if p.returncode == 0 and last and last[0].startswith("{"):
        info = json.loads(last[0])
        res.update(tool_s=info["tool_s"], peak_mb=info["vmhwm_mb"], peak_from="VmHWM")
    else:
        res["error"] = " ".join(stderr.strip().splitlines()[-3:])[-400:] or "no output"
    return res


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, bytes."""
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable:")) * 1024
