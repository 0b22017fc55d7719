"""FixInputs: named graph inputs become constants of their declared type.

    input sr: int64[] ; Equal(sr, 16000) -> c ; If(c, ...)
        ->  initializer sr = int64(16000) ; Equal(sr, 16000) -> c ; If(c, ...)

A model input that is fixed in practice (Silero VAD's sample rate, a mode flag) keeps
FoldConstants and InlineConstantIf from specializing the graph; fixing it turns the
branch on it into a constant condition. The initializer keeps the input's name, its
declared element type and the value's shape (a scalar for a scalar input; a value with
as many elements as a fully static shape is reshaped to it, so ``scale=2`` fits [1]). An input
that also had an initializer (an overridable default) loses the input entry and takes
the new value.

A name the model has no input for, or a value that does not fit the input's declared
type (a fraction for an integer, out of range, a bool for a float) or rank and fixed
dims, raises :class:`~fp8onnx.errors.UserError` with one line naming the input and the
fix. Running it again with the same values changes nothing.

Requires nothing. Example::

    FixInputs({"sr": 16000})(model).modified
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fp8onnx.errors import UserError
from fp8onnx.passinfra import Pass, PassResult

__all__ = ["FixInputs", "convert_value"]

log = logging.getLogger("fp8onnx.passes")


class FixInputs(Pass):
    """Replaces the named graph inputs by initializers holding the given values."""

    def __init__(self, values: Mapping[str, object]) -> None:
        super().__init__()
        self.values: Dict[str, object] = dict(values)

    def call(self, model):
        g = model.graph
        inputs = {v.name: v for v in g.input}
        inits = {t.name: t for t in g.initializer}
        changed = False
        for name, value in self.values.items():
            if name not in inputs:
                if name in inits and _same(numpy_helper.to_array(inits[name]), value):
                    continue  # fixed already, by an earlier run
                feedable = [v.name for v in g.input if v.name not in inits]
                raise UserError(f"cannot fix input {name!r}: the model has no such input (its inputs: "
                                f"{', '.join(feedable) or 'none'}): name one of them")
            array = convert_value(inputs[name], value)
            tensor = numpy_helper.from_array(array, name)
            if name in inits:
                inits[name].CopyFrom(tensor)
            else:
                g.initializer.append(tensor)
            kept = [v for v in g.input if v.name != name]
            del g.input[:]
            g.input.extend(kept)
            log.info("input %r fixed to %s", name, array.tolist())
            changed = True
        return PassResult(model, changed)


def _same(array: np.ndarray, value) -> bool:
    given = np.asarray(value)
    return given.shape == array.shape and bool(np.all(given == array))


def convert_value(vi: onnx.ValueInfoProto, value) -> np.ndarray:
    """``value`` as an array of ``vi``'s element type and shape; UserError when it does not fit."""
    name = vi.name
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.elem_type:
        raise UserError(f"cannot fix input {name!r}: it is not a typed tensor; only tensor inputs can be fixed")
    type_name = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    given = np.asarray(value)
    if dtype is None or dtype.kind not in "biuf":
        raise UserError(f"cannot fix input {name!r}: its type {type_name} is not bool, integer or float; "
                        "leave it as an input")
    hint = f"give e.g. {name}={_example(dtype)}"
    if given.dtype.kind == "O" and all(isinstance(v, int) for v in given.reshape(-1)):
        raise UserError(f"cannot fix input {name!r} ({type_name}) to {value!r}: the value does not fit "
                        f"{type_name}; {hint}")   # Python ints beyond int64
    if given.dtype.kind not in "biuf":
        raise UserError(f"cannot fix input {name!r} ({type_name}) to {value!r}: not a number; {hint}")
    if dtype.kind == "b":
        ok = given.dtype.kind == "b" or (given.dtype.kind in "iu" and np.isin(given, (0, 1)).all())
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        integral = given.dtype.kind in "biu" or (
            given.dtype.kind == "f" and bool(np.isfinite(given).all()) and bool((given == np.round(given)).all()))
        ok = integral and (given.size == 0 or (given.min() >= info.min and given.max() <= info.max))
    else:
        ok = given.dtype.kind in "iuf"
    if not ok:
        raise UserError(f"cannot fix input {name!r} ({type_name}) to {value!r}: the value does not fit "
                        f"{type_name}; {hint}")
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        fits = len(dims) == given.ndim and all(d is None or d == s for d, s in zip(dims, given.shape))
        if not fits and None not in dims and given.size == int(np.prod(dims, dtype=np.int64)):
            given, fits = given.reshape(dims), True   # 2 for a [1] input, a flat list for [2, 2]
        if not fits:
            want = "a scalar" if not dims else "shape [" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
            raise UserError(f"cannot fix input {name!r}: it takes {want} but the value {value!r} has shape "
                            f"{list(given.shape)}; give a value of that shape ({'a comma list for a vector' if dims else hint})")
    return given.astype(dtype)


def _example(dtype: np.dtype) -> str:
    return {"b": "true", "i": "16000", "u": "16000"}.get(dtype.kind, "0.5")
