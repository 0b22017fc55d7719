"""The standard scheme: the paper's compute-heavy operators.

Conv, ConvTranspose, Gemm and MatMul get FP8 weights (per output channel) and FP8
activations (per tensor); MatMul of two activations gets both inputs quantized; an
embedding Gather gets FP8 weights only; LSTM, GRU and RNN get FP8 input and recurrence
weights (per gate row) and an FP8 sequence input. Softmax is never quantized.
"""
from .patterns import PATTERNS as P
from .spec import Scheme, UnitSpec, WeightSpec as W

__all__ = ["STANDARD"]

_CONV = dict(activations=("x",), weights=(W("w", 0),))
_CONVT = dict(activations=("x",), weights=(W("w", 1),))
_LINEAR = dict(activations=("x",), weights=(W("w", -1),))
_GEMM = dict(activations=("x",), weights=(W("w", "gemm_b"),))
_RECURRENT = dict(activations=("x",), weights=(W("w", 1), W("r", 1)))

STANDARD = Scheme("standard", (
    UnitSpec("conv_silu", P["conv_silu"], **_CONV),
    UnitSpec("conv_act", P["conv_act"], **_CONV),
    UnitSpec("conv", P["conv"], **_CONV),
    UnitSpec("conv_transpose_act", P["conv_transpose_act"], **_CONVT),
    UnitSpec("conv_transpose", P["conv_transpose"], **_CONVT),
    UnitSpec("linear_bias_act", P["linear_bias_act"], **_LINEAR),
    UnitSpec("linear_bias", P["linear_bias"], **_LINEAR),
    UnitSpec("linear", P["linear"], **_LINEAR),
    UnitSpec("matmul_act", P["matmul_act"], activations=("a", "b")),
    UnitSpec("gemm_act", P["gemm_act"], **_GEMM),
    UnitSpec("gemm", P["gemm"], **_GEMM),
    UnitSpec("embedding", P["embedding"], weights=(W("table", 0),)),
    # W [directions, gates*hidden, input], R [directions, gates*hidden, hidden]: one scale
    # per gate row (LSTM 4 gates, GRU 3, RNN 1), shared by the two directions of a
    # bidirectional op (an ONNX per-axis scale has one axis)
    UnitSpec("lstm", P["lstm"], **_RECURRENT),
    UnitSpec("gru", P["gru"], **_RECURRENT),
    UnitSpec("rnn", P["rnn"], **_RECURRENT),
), "Conv, ConvTranspose, Gemm, MatMul (weights and activation x activation), embedding Gather, "
   "LSTM, GRU, RNN")
