"""How far a zoo classifier's top-1 agreement with itself moves under perturbations far
smaller than any quantization: the noise floor of the agreement metric.

    python tools/agreement_noise_floor.py [mobilenet_v2] [--trials 3]

The FP32 model, run by onnxruntime on the entry's held-out views, against the same model
on the same views (1) plus uniform noise of +-0.5, 1 and 2 grey levels of an 8-bit image
(the rounding an 8-bit photo already carries is +-0.5), and (2) moved by one pixel. It
also prints how confident FP32 is on those views. If FP32 disagrees with itself on k of n
views under such noise, a quantized model cannot be expected to keep a relative loss
below k/n on that metric.
"""
from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

# ImageNet normalisation of the torchvision models in the zoo: noise in grey levels is
# divided by the per-channel std, as the entry's own preprocessing divides pixels.
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Only ImageNet-normalised image classifiers: the noise is scaled by their std.
    ap.add_argument("entry", nargs="?", default="mobilenet_v2", choices=["mobilenet_v2"])
    ap.add_argument("--trials", type=int, default=3, help="noise draws per level")
    a = ap.parse_args(argv)
    from fp8onnx import zoo

    e = zoo.get(a.entry)
    s = zoo.ort_session(e.load().SerializeToString())
    feeds = list(e.eval_feeds(e.default_eval_n))
    name = next(iter(feeds[0]))
    ref = np.concatenate([s.run(None, f)[0] for f in feeds])
    top = ref.argmax(1)
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    print(f"{a.entry}: {len(top)} views; FP32 top-1 probability median {np.median(p.max(1)):.2f}, "
          f"{int(np.sum(p.max(1) < 0.5))} views below 0.5")
    rng = np.random.default_rng(0)
    for lsb in (0.5, 1.0, 2.0):
        agree = []
        for _ in range(a.trials):
            out = [s.run(None, {name: f[name] + rng.uniform(-lsb, lsb, f[name].shape).astype(np.float32) / 255 / STD})[0]
                   for f in feeds]
            agree.append(float(np.mean(np.concatenate(out).argmax(1) == top)))
        print(f"  noise +-{lsb:g}/255: top-1 agreement with itself {', '.join(f'{v:.3f}' for v in agree)}")
    out = [s.run(None, {name: np.roll(f[name], 1, axis=3)})[0] for f in feeds]
    print(f"  moved one pixel: top-1 agreement with itself {np.mean(np.concatenate(out).argmax(1) == top):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
