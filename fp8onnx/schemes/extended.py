"""The extended scheme: standard plus normalisation and element-wise operators.

LayerNormalization (fused, or decomposed as PyTorch or jax2tf write it), BatchNormalization and element-wise
Add/Mul/Div get FP8 activation inputs; their own parameters stay float.
"""
from .patterns import PATTERNS as P
from .spec import UnitSpec
from .standard import STANDARD

__all__ = ["EXTENDED"]

EXTENDED = STANDARD.extend("extended", (
    UnitSpec("layernorm_decomposed", P["layernorm_decomposed"], activations=("x",)),
    UnitSpec("layernorm", P["layernorm"], activations=("x",)),
    UnitSpec("layernorm_moments", P["layernorm_moments"], activations=("x",)),
    UnitSpec("batchnorm", P["batchnorm"], activations=("x",)),
    UnitSpec("magnitude", P["magnitude"], activations=("a", "b")),
    UnitSpec("hardswish", P["hardswish_decomposed"]),  # claims its nodes: nothing inside
    UnitSpec("add", P["add"], activations=("a", "b")),
    UnitSpec("mul", P["mul"], activations=("a", "b")),
    UnitSpec("div", P["div"], activations=("a", "b")),
), "standard + LayerNorm, BatchNorm and element-wise Add/Mul/Div inputs")
