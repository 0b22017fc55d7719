"""Small ONNX models built by hand for unit tests (shared by the test files)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, initializers=(), opset=19, extra_opsets=(), name="g"):
    g = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 9
    return m


def rng(seed=0):
    return np.random.default_rng(seed)


def conv_relu_gemm(seed=0, opset=19):
    """input[N,3,8,8] -> Conv -> Relu -> Flatten -> Gemm(transB=1) -> logits[N,10]."""
    r = rng(seed)
    w = r.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    b = r.normal(0, 0.1, 4).astype(np.float32)
    fw = r.normal(0, 0.1, (10, 4 * 8 * 8)).astype(np.float32)
    fb = r.normal(0, 0.1, 10).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("Flatten", ["relu_out"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return model(nodes, [vi("input", ["N", 3, 8, 8])], [vi("logits", ["N", 10])],
                 [init("conv.w", w), init("conv.b", b), init("fc.w", fw), init("fc.b", fb)], opset=opset)


def attention_block(seed=0, d=16, opset=17):
    """x[N,T,d] -> q,k,v Linear (MatMul+Add) -> softmax(q k^T) v -> Linear -> + x -> LayerNorm (decomposed)."""
    r = rng(seed)
    inits = []
    nodes = []
    for p in "qkvo":
        inits += [init(f"{p}.w", r.normal(0, 0.3, (d, d)).astype(np.float32)),
                  init(f"{p}.b", r.normal(0, 0.1, d).astype(np.float32))]
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"{p}.w"], [f"{p}_mm"], name=f"{p}_proj"),
                  helper.make_node("Add", [f"{p}_mm", f"{p}.b"], [p], name=f"{p}_bias")]
    inits += [init("two", np.array(2.0, np.float32)), init("eps", np.array(1e-5, np.float32)),
              init("gamma", np.ones(d, np.float32)), init("beta", np.zeros(d, np.float32))]
    nodes += [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="av"),
        helper.make_node("MatMul", ["ctx", "o.w"], ["o_mm"], name="o_proj"),
        helper.make_node("Add", ["o_mm", "o.b"], ["o"], name="o_bias"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("ReduceMean", ["res"], ["mean"], name="ln_mean", axes=[-1]),
        helper.make_node("Sub", ["res", "mean"], ["centered"], name="ln_sub"),
        helper.make_node("Pow", ["centered", "two"], ["sq"], name="ln_pow"),
        helper.make_node("ReduceMean", ["sq"], ["var"], name="ln_var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="ln_addeps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="ln_sqrt"),
        helper.make_node("Div", ["centered", "std"], ["normed"], name="ln_div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="ln_mul"),
        helper.make_node("Add", ["scaled", "beta"], ["y"], name="ln_add"),
    ]
    return model(nodes, [vi("x", ["N", "T", d])], [vi("y", ["N", "T", d])], inits, opset=opset)


#: onnxruntime graph rewrites that are wrong for FP8 Q/DQ (the runtime documents why).
from fp8onnx.runtime import FP8_UNSAFE_OPTIMIZERS as _UNSAFE  # noqa: E402

ORT_FP8_UNSAFE = list(_UNSAFE)


def ort_run(model, feeds, output=0):
    """Run with onnxruntime's own kernels (CPU), minus its rewrites that are wrong for FP8."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"], disabled_optimizers=ORT_FP8_UNSAFE)
    return sess.run(None, feeds)[output]


def fp8_run(model, feeds, output=0):
    """Run a model that may hold fp8onnx custom ops."""
    from fp8onnx.runtime import InferenceSession

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return InferenceSession(data).run(None, feeds)[output]
