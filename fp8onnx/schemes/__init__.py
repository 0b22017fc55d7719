"""Quantization schemes: frozen tables saying, per quantizable unit, what gets FP8.

A :class:`UnitSpec` names a pattern (from :mod:`fp8onnx.schemes.patterns`), which of the
pattern's variables are activations (per-tensor Q/DQ) and which are weights (per-channel
Q/DQ on an axis). A :class:`Scheme` is an ordered tuple of specs: earlier specs claim
nodes first, so a Conv+Relu unit is found before the bare Conv and nothing is inserted
inside a unit. ``extended`` is ``standard`` plus more rows.

>>> from fp8onnx import schemes
>>> [u.unit for u in schemes.get("standard").units][:3]
['conv_silu', 'conv_act', 'conv']
"""
from __future__ import annotations

from .spec import Scheme, UnitSpec, WeightSpec, weight_axis
from .standard import STANDARD
from .extended import EXTENDED

__all__ = ["Scheme", "UnitSpec", "WeightSpec", "weight_axis", "get", "names", "register", "STANDARD",
           "EXTENDED"]

_SCHEMES = {s.name: s for s in (STANDARD, EXTENDED)}


def register(scheme: Scheme) -> Scheme:
    """Make ``scheme`` available by name (``--scheme``, ``Recipe(scheme=...)``).

    The built-in names cannot be replaced; registering the same scheme twice is harmless.
    """
    if scheme.name in ("standard", "extended") and _SCHEMES[scheme.name] is not scheme:
        raise ValueError(f"scheme name {scheme.name!r} is built in: choose another name")
    _SCHEMES[scheme.name] = scheme
    return scheme


def names() -> tuple:
    return tuple(_SCHEMES)


def get(name) -> Scheme:
    """The scheme called ``name`` (a Scheme passes through); unknown names raise ValueError."""
    if isinstance(name, Scheme):
        return name
    try:
        return _SCHEMES[name]
    except KeyError as e:
        raise ValueError(f"unknown scheme {name!r}: choose one of {', '.join(_SCHEMES)}") from e
