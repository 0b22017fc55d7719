"""Train and export the bundled digits models and their real data.

Run once (needs torch's CPU build and scikit-learn; the fp8onnx package never does)::

    pip install torch==2.13.0 scikit-learn
    python models/make_models.py            # writes models/*.onnx and models/data/*.npz

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``, 1797 real 8x8
scans from UCI, shipped inside the sklearn wheel), split 75/25 stratified with a fixed
seed. Pixels 0..16 are scaled to [0, 1] and stored as float32 N x 1 x 8 x 8, key
``input`` (the models' input name); the test file also holds ``label`` (int64).

Models (ONNX opset 17, dynamic batch, input ``input`` N x 1 x 8 x 8, output ``logits``
N x 10): the networks are trained with torch, then written node by node with
``onnx.helper`` so the graph is exactly what we say it is:

* ``digits_cnn.onnx``: 3 x (Conv -> BatchNormalization -> Relu), MaxPool, Flatten,
  Gemm -> Relu -> Gemm. BatchNormalization nodes are kept (for BN calibration tests).
* ``digits_cnn_bnfold.onnx``: the same network with each BatchNormalization folded into
  its Conv's weights and bias.
* ``digits_mlp.onnx``: Flatten, then 3 x (MatMul -> Add) with Relu between.

Each exported file is checked against torch's own output before it is written.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger("make_models")

HERE = Path(__file__).resolve().parent
OPSET = 17
SEED = 0
N_CALIB = 256
BN_EPS = 1e-5


def load_split():
    """Return (x_train, x_test, y_train, y_test) with x float32 N x 1 x 8 x 8 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=SEED)


# ---------------------------------------------------------------- training (torch)
def _train(net, x, y, epochs, lr, shift):
    import torch

    torch.manual_seed(SEED)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            if shift:
                # A 1-pixel random shift helps the CNN (translation-equivariant); it hurts the
                # MLP, which sees pixels by position (measured: 0.94 vs 0.97+ test accuracy).
                dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    return net


def train_cnn(x, y):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, eps=BN_EPS), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, eps=BN_EPS), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, eps=BN_EPS), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    return _train(net, x, y, epochs=40, lr=3e-3, shift=True)


def train_mlp(x, y):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    return _train(net, x, y, epochs=60, lr=3e-3, shift=False)


# ---------------------------------------------------------------- ONNX writing
def _np(t):
    return t.detach().cpu().numpy().astype(np.float32)


def _io():
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return inp, out


def _finish(nodes, inits, name, doc):
    inp, out = _io()
    graph = helper.make_graph(nodes, name, [inp], [out], initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fp8onnx/models/make_models.py", ir_version=8)
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def cnn_to_onnx(net, fold_bn: bool):
    """Write the trained CNN; ``fold_bn`` folds each BatchNormalization into its Conv."""
    convs = [net[0], net[3], net[7]]
    bns = [net[1], net[4], net[8]]
    fc1, fc2 = net[11], net[13]
    nodes, inits = [], []
    x = "input"
    for i, (conv, bn) in enumerate(zip(convs, bns), start=1):
        w = _np(conv.weight)
        g, b, m, v = _np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var)
        if fold_bn:
            s = g / np.sqrt(v + bn.eps)
            inits += [numpy_helper.from_array((w * s[:, None, None, None]).astype(np.float32), f"conv{i}.weight"),
                      numpy_helper.from_array((b - m * s).astype(np.float32), f"conv{i}.bias")]
            nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}_out"],
                                          name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            pre = f"conv{i}_out"
        else:
            inits.append(numpy_helper.from_array(w, f"conv{i}.weight"))
            nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight"], [f"conv{i}_out"],
                                          name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            for suffix, arr in (("scale", g), ("bias", b), ("mean", m), ("var", v)):
                inits.append(numpy_helper.from_array(arr, f"bn{i}.{suffix}"))
            nodes.append(helper.make_node(
                "BatchNormalization",
                [f"conv{i}_out", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"],
                [f"bn{i}_out"], name=f"bn{i}", epsilon=float(bn.eps)))
            pre = f"bn{i}_out"
        nodes.append(helper.make_node("Relu", [pre], [f"relu{i}_out"], name=f"relu{i}"))
        x = f"relu{i}_out"
        if i == 2:
            nodes.append(helper.make_node("MaxPool", [x], ["pool_out"], name="pool",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x = "pool_out"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    inits += [numpy_helper.from_array(_np(fc1.weight), "fc1.weight"),
              numpy_helper.from_array(_np(fc1.bias), "fc1.bias"),
              numpy_helper.from_array(_np(fc2.weight), "fc2.weight"),
              numpy_helper.from_array(_np(fc2.bias), "fc2.bias")]
    nodes += [
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="relu_fc1"),
        helper.make_node("Gemm", ["fc1_relu", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    kind = "BatchNormalization folded into Conv" if fold_bn else "BatchNormalization kept"
    return _finish(nodes, inits, "digits_cnn_bnfold" if fold_bn else "digits_cnn",
                   f"CNN on sklearn digits (1x8x8 in [0,1]) -> 10 logits; {kind}.")


def mlp_to_onnx(net):
    lins = [net[1], net[3], net[5]]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], name="flatten", axis=1)]
    inits = []
    x = "flat"
    for i, lin in enumerate(lins, start=1):
        # MatMul wants K x N: store the transposed torch weight.
        inits += [numpy_helper.from_array(np.ascontiguousarray(_np(lin.weight).T), f"fc{i}.weight"),
                  numpy_helper.from_array(_np(lin.bias), f"fc{i}.bias")]
        last = i == len(lins)
        nodes += [helper.make_node("MatMul", [x, f"fc{i}.weight"], [f"fc{i}_mm"], name=f"fc{i}_matmul"),
                  helper.make_node("Add", [f"fc{i}_mm", f"fc{i}.bias"],
                                   ["logits" if last else f"fc{i}_out"], name=f"fc{i}_add")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"fc{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
            x = f"relu{i}_out"
    return _finish(nodes, inits, "digits_mlp",
                   "MLP on sklearn digits (1x8x8 in [0,1], flattened inside) -> 10 logits.")


def _ort_logits(model, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: models/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    torch.set_num_threads(1)  # single-threaded CPU training is bit-reproducible
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_split()
    (args.out / "data").mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(x_train), N_CALIB, replace=False))
    np.savez_compressed(args.out / "data" / "digits_calib.npz", input=x_train[calib_idx])
    np.savez_compressed(args.out / "data" / "digits_test.npz", input=x_test, label=y_test)

    summary = {}
    cnn, mlp = train_cnn(x_train, y_train), train_mlp(x_train, y_train)
    for name, net, model in (("digits_cnn", cnn, cnn_to_onnx(cnn, fold_bn=False)),
                             ("digits_cnn_bnfold", cnn, cnn_to_onnx(cnn, fold_bn=True)),
                             ("digits_mlp", mlp, mlp_to_onnx(mlp))):
        with torch.no_grad():
            ref = net(torch.from_numpy(x_test)).numpy()
        got = _ort_logits(model, x_test)
        err = float(np.abs(got - ref).max())
        if err > 1e-3:
            raise SystemExit(f"{name}: ONNX output differs from torch by {err:g}")
        acc = float((got.argmax(1) == y_test).mean())
        onnx.save(model, args.out / f"{name}.onnx")
        summary[name] = {"test_accuracy": round(acc, 4), "max_abs_diff_vs_torch": err}
        log.info("%s: test accuracy %.4f (max |onnx - torch| = %.2g)", name, acc, err)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
