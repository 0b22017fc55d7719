"""The pattern library: quantizable units as data, with their conditions.

Each pattern's docstring-style comment gives the rewrite it enables in arrow form.
Conditions return the reason a match stays float, which the report shows per node.
"""
from __future__ import annotations

from typing import Optional

import onnx
from onnx import TensorProto

from ..pattern import Match, PNode, Pattern

__all__ = ["PATTERNS", "ACTIVATION_OPS"]

#: Element-wise activations that fuse into the unit before them; never quantized.
ACTIVATION_OPS = (
    "Relu", "Clip", "HardSwish", "HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh", "Elu",
    "Selu", "Gelu", "Softplus", "Mish", "PRelu",
)

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


# --- conditions: (Match) -> reason or None -------------------------------------------

def constant_weight(var: str, what: str = "weight"):
    def cond(m: Match) -> Optional[str]:
        name = m.vars[var]
        if name not in m.index.initializers:
            if m.index.is_constant(name):
                return f"{what} {name!r} is a Constant node output (run lift_constants first)"
            return f"{what} {name!r} is not constant"
        if name in m.index.all_inputs:
            return f"{what} {name!r} is a graph input that callers may override"
        if m.index.initializers[name].data_type not in _FLOATS:
            return f"{what} {name!r} is not a float tensor"
        return None
    cond.__name__ = f"constant_{var}"
    return cond


def weight_rank_at_least(var: str, rank: int):
    def cond(m: Match) -> Optional[str]:
        dims = m.index.initializers[m.vars[var]].dims
        return None if len(dims) >= rank else f"weight {m.vars[var]!r} has rank {len(dims)} < {rank}"
    return cond


def not_constant(*vars_: str):
    def cond(m: Match) -> Optional[str]:
        for v in vars_:
            if m.index.is_constant(m.vars[v]):
                return f"input {m.vars[v]!r} is constant (a weight on the wrong side)"
        return None
    return cond


def gather_axis_zero(m: Match) -> Optional[str]:
    axis = next((a.i for a in m.anchor.attribute if a.name == "axis"), 0)
    return None if axis == 0 else f"Gather axis is {axis}, not an embedding lookup"


_FOLDS_INTO = ("Conv", "ConvTranspose")
_TAKES_BIAS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _sole_output_of(m: Match, name: str, ops) -> Optional[onnx.NodeProto]:
    """The node among ``ops`` whose output ``name`` is read by this unit alone, else None."""
    p = m.index.producer.get(name)
    if p is None or p.op_type not in ops or name in m.index.graph_outputs:
        return None
    return p if len(m.index.consumers[name]) == 1 else None


# A BatchNormalization or a constant bias Add that alone reads a Conv's (or a MatMul's)
# output is fused into that node by every deployment (onnxruntime, TensorRT) and by the
# paper's tooling before it quantizes, so the raw output is no tensor of the deployed
# model. Paddle exports write both: quantizing them added 53 FP8 points to PP-OCR cls
# (35 BN and 18 bias Adds) that no deployment has.

def not_folded_into_conv(m: Match) -> Optional[str]:
    p = _sole_output_of(m, m.vars["x"], _FOLDS_INTO)
    return f"follows a {p.op_type}, into which deployment folds it" if p else None


def not_a_bias_add(m: Match) -> Optional[str]:
    a, b = m.vars["a"], m.vars["b"]
    for act, other in ((a, b), (b, a)):
        p = _sole_output_of(m, act, _TAKES_BIAS) if m.index.is_constant(other) else None
        if p is not None:
            return f"adds a constant bias to a {p.op_type}, which deployment fuses"
    return None


# --- patterns ------------------------------------------------------------------------

def _with_act(name, anchor: PNode, conditions, extra=()):
    """anchor -> act: the anchor with one fused activation after it."""
    return Pattern(name, anchor.name, (anchor, PNode("act", ACTIVATION_OPS, (f"%{anchor.name}",))) + extra,
                   conditions)


_conv = PNode("conv", ("Conv",), ("$x", "$w"))
_convt = PNode("convt", ("ConvTranspose",), ("$x", "$w"))
_mm = PNode("mm", ("MatMul",), ("$x", "$w"))
_conv_cond = (constant_weight("w"),)
_lin_cond = (constant_weight("w"), weight_rank_at_least("w", 2))

PATTERNS = {p.name: p for p in (
    # Conv(x, W) -> Sigmoid -> Mul : SiLU as YOLOv8 and EfficientNet export it
    Pattern("conv_silu", "conv", (
        _conv, PNode("sig", ("Sigmoid",), ("%conv",)),
        PNode("mul", ("Mul",), ("%conv", "%sig"), commutative=True)), _conv_cond),
    # Conv(x, W) -> Relu|Clip|HardSwish|...
    _with_act("conv_act", _conv, _conv_cond),
    # Conv(x, W)
    Pattern("conv", "conv", (_conv,), _conv_cond),
    _with_act("conv_transpose_act", _convt, _conv_cond),
    Pattern("conv_transpose", "convt", (_convt,), _conv_cond),
    # MatMul(x, W) -> Add(b) -> act : a Linear layer with bias and activation
    Pattern("linear_bias_act", "mm", (
        _mm, PNode("add", ("Add",), ("%mm", "#b"), commutative=True),
        PNode("act", ACTIVATION_OPS, ("%add",))), _lin_cond),
    # MatMul(x, W) -> Add(b)
    Pattern("linear_bias", "mm", (
        _mm, PNode("add", ("Add",), ("%mm", "#b"), commutative=True)), _lin_cond),
    Pattern("linear", "mm", (_mm,), _lin_cond),
    # MatMul(a, b) with both activations: attention's Q K^T and A V
    Pattern("matmul_act", "mm", (PNode("mm", ("MatMul",), ("$a", "$b")),), (not_constant("a", "b"),)),
    _with_act("gemm_act", PNode("gemm", ("Gemm",), ("$x", "$w")), (constant_weight("w"),)),
    Pattern("gemm", "gemm", (PNode("gemm", ("Gemm",), ("$x", "$w")),), (constant_weight("w"),)),
    # LSTM(x, W, R, ...) : input and recurrence weights per gate row, the sequence input;
    # the recurrence itself (h_t, c_t) runs inside the op, in float
    Pattern("lstm", "lstm", (PNode("lstm", ("LSTM",), ("$x", "$w", "$r")),),
            (constant_weight("w"), constant_weight("r"))),
    # GRU(x, W, R, ...), RNN(x, W, R, ...) : the same, with 3 gates and 1
    Pattern("gru", "gru", (PNode("gru", ("GRU",), ("$x", "$w", "$r")),),
            (constant_weight("w"), constant_weight("r"))),
    Pattern("rnn", "rnn", (PNode("rnn", ("RNN",), ("$x", "$w", "$r")),),
            (constant_weight("w"), constant_weight("r"))),
    # Gather(Table, ids) : an embedding lookup, weights only
    Pattern("embedding", "gather", (PNode("gather", ("Gather",), ("$table", "$ids")),),
            (constant_weight("table", "table"), weight_rank_at_least("table", 2), gather_axis_zero)),
    # extended scheme ---------------------------------------------------------------
    Pattern("layernorm", "ln", (PNode("ln", ("LayerNormalization",), ("$x",)),)),
    # ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add : LayerNorm as older exports write it
    Pattern("layernorm_decomposed", "mean", (
        PNode("mean", ("ReduceMean",), ("$x",)),
        PNode("sub", ("Sub",), ("$x", "%mean")),
        PNode("pow", ("Pow",), ("%sub", "#two")),
        PNode("var", ("ReduceMean",), ("%pow",)),
        PNode("addeps", ("Add",), ("%var", "#eps"), commutative=True),
        PNode("sqrt", ("Sqrt",), ("%addeps",)),
        PNode("div", ("Div",), ("%sub", "%sqrt")),
        PNode("mul", ("Mul",), ("%div", "#gamma"), commutative=True),
        PNode("add", ("Add",), ("%mul", "#beta"), commutative=True),
    )),
    # LayerNorm in moments form, as jax2tf exports it (Magika): E[x], E[x^2] by ReduceSum
    # times 1/n, var = max(0, E[x^2] - E[x]^2) broadcast back, (x - E[x]) / sqrt(var + eps)
    # * gamma + beta. Quantizing inside it is catastrophic (E[x^2] - E[x]^2 cancels, the
    # reciprocal square root reaches 1/sqrt(eps)), so it is one unit with only x quantized.
    Pattern("layernorm_moments", "sum", (
        PNode("sum", ("ReduceSum",), ("$x",)),
        PNode("sq", ("Mul",), ("$x", "$x")),
        PNode("sum2", ("ReduceSum",), ("%sq",)),
        PNode("ex", ("Mul",), ("%sum", "$rn"), commutative=True),
        PNode("ex2", ("Mul",), ("%sum2", "$rn"), commutative=True),
        PNode("exsq", ("Mul",), ("%ex", "%ex")),
        PNode("var", ("Sub",), ("%ex2", "%exsq")),
        PNode("clamp", ("Max",), ("#zero", "%var"), commutative=True),
        PNode("vr", ("Reshape",), ("%clamp",)),
        PNode("vb", ("Expand",), ("%vr",)),
        PNode("addeps", ("Add",), ("%vb", "#eps"), commutative=True),
        PNode("sqrt", ("Sqrt",), ("%addeps",)),
        PNode("rsqrt", ("Reciprocal",), ("%sqrt",)),
        PNode("scale", ("Mul",), ("%rsqrt", "$gamma"), commutative=True),
        PNode("mr", ("Reshape",), ("%ex",)),
        PNode("mb", ("Expand",), ("%mr",)),
        PNode("sub", ("Sub",), ("$x", "%mb")),
        PNode("mul", ("Mul",), ("%sub", "%scale"), commutative=True),
        PNode("add", ("Add",), ("%mul", "$beta"), commutative=True),
    )),
    # BatchNormalization(x) on its own (not after a Conv, which absorbs it)
    Pattern("batchnorm", "bn", (PNode("bn", ("BatchNormalization",), ("$x",)),),
            (not_folded_into_conv,)),
    # Sqrt(a^2 + b^2) : a magnitude, as an STFT front end computes it (Silero VAD). The
    # squares span twice the octaves of a and b (E3M4 flushes 96% of them to zero), so
    # the unit quantizes a and b and computes the magnitude in float.
    Pattern("magnitude", "pa", (
        PNode("pa", ("Pow",), ("$a", "#two")),
        PNode("pb", ("Pow",), ("$b", "#two2")),
        PNode("add", ("Add",), ("%pa", "%pb")),
        PNode("sqrt", ("Sqrt",), ("%add",)),
    )),
    # Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(6) : HardSwish as Paddle exports it; one
    # activation function, so the extended scheme inserts nothing inside it
    Pattern("hardswish_decomposed", "add", (
        PNode("add", ("Add",), ("$x", "#three"), commutative=True),
        PNode("clip", ("Clip",), ("%add",)),
        PNode("mul", ("Mul",), ("$x", "%clip"), commutative=True),
        PNode("div", ("Div", "Mul"), ("%mul", "#sixth")),
    )),
    Pattern("add", "op", (PNode("op", ("Add",), ("$a", "$b")),), (not_a_bias_add,)),
    Pattern("mul", "op", (PNode("op", ("Mul",), ("$a", "$b")),)),
    Pattern("div", "op", (PNode("op", ("Div",), ("$a", "$b")),)),
)}
