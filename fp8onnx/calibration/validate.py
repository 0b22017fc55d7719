"""Checking calibration feeds against a model's graph inputs, one feed at a time.

:class:`FeedValidator` holds what each graph input expects (element type, fixed dims)
and turns a user's feed into what onnxruntime needs, or raises
:class:`~fp8onnx.errors.CalibrationError` naming the input, the sample and the fix:
names that do not match, float data for an int input, a rank or a fixed dim that
contradicts the model, NaN or Inf. Lossless-in-intent conversions are silent
(float64 -> float32, int -> float, int32 -> int64). Initializers that old exporters
also list as graph inputs need no data.

>>> import numpy as np
>>> from onnx import helper, TensorProto
>>> m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])]))
>>> FeedValidator(m).check({"x": np.zeros((1, 2))}, "feed 0", 0, rows=False)["x"].dtype
dtype('float32')
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import CalibrationError

__all__ = ["FeedValidator", "InputSpec"]

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


class InputSpec:
    """What the model expects of one graph input."""

    def __init__(self, vi: onnx.ValueInfoProto):
        self.name = vi.name
        tt = vi.type.tensor_type
        self.elem_type = tt.elem_type
        try:
            self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        except (KeyError, TypeError, ValueError):
            self.dtype = None
        self.shape = None  # None: rank unknown; else a tuple of int (fixed) or str/None (dynamic)
        if tt.HasField("shape"):
            self.shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                else (d.dim_param or None)
                for d in tt.shape.dim
            )

    @property
    def is_float(self) -> bool:
        return self.elem_type in _FLOAT_TYPES

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ", ".join(str(d) if d is not None else "?" for d in self.shape) + "]"


class FeedValidator:
    """Checks and converts feeds against the model's graph inputs."""

    def __init__(self, model: onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        self.inputs = {vi.name: InputSpec(vi) for vi in model.graph.input}
        # Old models list initializers as graph inputs too: those need no data.
        self.required = [n for n in self.inputs if n not in inits]
        self.optional = {n for n in self.inputs if n in inits}

    def check_names(self, names, where: str) -> None:
        names = set(names)
        missing = [n for n in self.required if n not in names]
        unknown = sorted(n for n in names if n not in self.inputs)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unknown:
                parts.append(f"unknown {unknown}")
            raise CalibrationError(
                f"calibration {where} does not match the model's inputs ({'; '.join(parts)}); "
                f"the model's inputs are {self.required}: key the arrays by those names"
            )

    def check(self, feed, where: str, first_sample: int, rows: bool) -> dict:
        """The converted feed; raises CalibrationError naming the problem and the fix."""
        if not isinstance(feed, Mapping):
            raise CalibrationError(
                f"calibration {where} is a {type(feed).__name__}, not a dict "
                "{input_name: array}: yield one dict per feed"
            )
        self.check_names(feed.keys(), where)
        return {name: self._array(name, value, where, first_sample, rows)
                for name, value in feed.items()}

    def _array(self, name, value, where, first_sample, rows) -> np.ndarray:
        spec = self.inputs[name]
        try:
            arr = np.asarray(value)
        except Exception as e:  # ragged lists and the like
            raise CalibrationError(
                f"input {name!r} of calibration {where} is not an array ({e}): pass numpy arrays"
            ) from e
        arr = self._convert(spec, arr, where)
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise CalibrationError(
                    f"input {name!r} of calibration {where} has shape {arr.shape} (rank "
                    f"{arr.ndim}) but the model expects rank {len(spec.shape)}, shape "
                    f"{spec.shape_text()}: reshape the data (e.g. add the batch axis)"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise CalibrationError(
                        f"input {name!r} of calibration {where} has shape {arr.shape} but the "
                        f"model fixes dim {axis} at {want} (shape {spec.shape_text()}): check "
                        "the layout (e.g. NCHW vs NHWC) and preprocessing"
                    )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr)
            what = "NaN" if np.isnan(arr).any() else "Inf"
            if rows and arr.ndim:
                row = int(np.argmax(bad.reshape(arr.shape[0], -1).any(axis=1)))
                sample = first_sample + row
            else:
                sample = first_sample
            raise CalibrationError(
                f"input {name!r} of calibration sample {sample} ({where}) contains {what}: "
                "clean the data or drop that sample"
            )
        return arr

    @staticmethod
    def _convert(spec: InputSpec, arr: np.ndarray, where: str) -> np.ndarray:
        if spec.dtype is None or arr.dtype == spec.dtype:
            return arr
        kind = arr.dtype.kind
        if spec.is_float:
            if kind in "fiub":  # float64 -> float32, ints -> float: silently
                return arr.astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            if kind in "iub":
                return arr.astype(spec.dtype)
            if kind == "f":
                raise CalibrationError(
                    f"input {spec.name!r} of the model is {spec.dtype} but calibration {where} "
                    f"holds {arr.dtype}: pass integer arrays (e.g. token ids), not floats"
                )
        elif spec.dtype.kind == "b" and kind == "b":
            return arr
        raise CalibrationError(
            f"input {spec.name!r} of the model is {spec.dtype} but calibration {where} holds "
            f"{arr.dtype}: convert the data to {spec.dtype}"
        )
