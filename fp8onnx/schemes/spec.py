"""The record types schemes are made of."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import onnx

from ..pattern import Pattern

__all__ = ["WeightSpec", "UnitSpec", "Scheme", "weight_axis"]


@dataclass(frozen=True)
class WeightSpec:
    """A weight variable of a pattern and its per-channel axis.

    ``axis`` is an int (negative counts from the end) or the name of a rule in
    ``AXIS_RULES`` for ops whose channel axis depends on an attribute.
    """

    var: str
    axis: Union[int, str]


def _gemm_b_axis(node: onnx.NodeProto) -> int:
    # Gemm computes A' x B' with B' = B^T when transB=1: the output channel is B's row then.
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1


AXIS_RULES = {"gemm_b": _gemm_b_axis}


def weight_axis(spec: WeightSpec, anchor: onnx.NodeProto, rank: int) -> int:
    """The non-negative channel axis of ``spec`` for this anchor node and weight rank."""
    axis = AXIS_RULES[spec.axis](anchor) if isinstance(spec.axis, str) else spec.axis
    return axis + rank if axis < 0 else axis


@dataclass(frozen=True)
class UnitSpec:
    """One row of a scheme: a unit kind, its pattern, its activation and weight variables."""

    unit: str
    pattern: Pattern
    activations: Tuple[str, ...] = ()
    weights: Tuple[WeightSpec, ...] = ()

    @property
    def op_type(self) -> str:
        anchor = next(p for p in self.pattern.nodes if p.name == self.pattern.anchor)
        return anchor.ops[0]

    def to_dict(self) -> dict:
        return {
            "pattern": self.pattern.name,
            "anchor": self.op_type,
            "activations": list(self.activations),
            "weights": {w.var: w.axis for w in self.weights},
        }


@dataclass(frozen=True)
class Scheme:
    name: str
    units: Tuple[UnitSpec, ...]
    description: str = ""

    def extend(self, name: str, more: Tuple[UnitSpec, ...], description: str = "") -> "Scheme":
        return Scheme(name, self.units + tuple(more), description)

    @property
    def anchor_ops(self) -> frozenset:
        """Op types this scheme can quantize: nodes of these types left float get a reason."""
        return frozenset(u.op_type for u in self.units)

    def to_dict(self) -> dict:
        return {"name": self.name, "units": {u.unit: u.to_dict() for u in self.units}}
