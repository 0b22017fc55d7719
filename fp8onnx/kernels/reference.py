"""onnxruntime's own QuantizeLinear/DequantizeLinear as an oracle for the kernels.

Builds one-node (or two-node) ONNX models with :mod:`onnx.helper` (opset 21, zero
point 0 of the format's type, the ``saturate`` attribute) and runs them in
onnxruntime. Used by the tests (bit-exactness) and ``tools/bench_kernels.py``
(the speed baseline); the package's kernels never call it.

>>> import numpy as np
>>> from fp8onnx.kernels.reference import OrtQDQ
>>> OrtQDQ("e4m3", "qdq").run(np.array([1.0, 500.0], np.float32), np.float32(1.0))
array([  1., 448.], dtype=float32)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .. import formats

__all__ = ["OrtQDQ", "build_model"]

_OPSET = 21


def _zero_point(fmt, shape):
    """An all-zero initializer of the format's ONNX type (raw bytes: FP8 has no numpy dtype)."""
    n = int(np.prod(shape)) if shape else 1
    return helper.make_tensor("zp", fmt.onnx_type, list(shape), bytes(n), raw=True)


def build_model(fmt, op, *, axis=None, rank=1, channels=None, saturate=True):
    """A model running ``op`` in ("q", "dq", "qdq") for ``fmt`` on a float32 input of ``rank``.

    Per axis when ``axis`` is given (the scale input then has ``channels`` entries).
    Inputs: ``x`` (float32, or the code type for "dq") and ``scale`` (float32).
    """
    fmt = formats.get(fmt)
    if fmt.onnx_type is None:
        raise ValueError(f"format {fmt.name!r} has no ONNX type: onnxruntime cannot be its oracle")
    sshape = [] if axis is None else [channels]
    zp = _zero_point(fmt, sshape)
    xshape = [None] * rank
    attrs_q = {} if axis is None else {"axis": axis}
    attrs_dq = dict(attrs_q)
    if fmt.is_float:
        attrs_q["saturate"] = int(bool(saturate))
    nodes = []
    if op in ("q", "qdq"):
        nodes.append(helper.make_node("QuantizeLinear", ["x", "scale", "zp"],
                                      ["q" if op == "qdq" else "y"], **attrs_q))
    if op in ("dq", "qdq"):
        nodes.append(helper.make_node("DequantizeLinear", ["q" if op == "qdq" else "x", "scale", "zp"],
                                      ["y"], **attrs_dq))
    x_type = fmt.onnx_type if op == "dq" else TensorProto.FLOAT
    y_type = fmt.onnx_type if op == "q" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, f"{op}_{fmt.name}",
        [helper.make_tensor_value_info("x", x_type, xshape),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, sshape)],
        [helper.make_tensor_value_info("y", y_type, xshape)],
        initializer=[zp],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


class OrtQDQ:
    """A cached onnxruntime session for one (format, op, axis, saturate) combination.

    ``run(x, scale)`` takes and returns numpy arrays; FP8 codes travel as uint8 arrays
    (the session's FP8 tensors are made with OrtValue from the raw bytes).
    """

    def __init__(self, fmt, op, *, axis=None, rank=1, channels=None, saturate=True, threads=1):
        import onnxruntime as ort

        self.fmt = formats.get(fmt)
        self.op = op
        self.axis = axis
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._rank = rank
        self._channels = channels
        model = build_model(self.fmt, op, axis=axis, rank=rank, channels=channels, saturate=saturate)
        self.session = ort.InferenceSession(model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self._ort = ort

    def _code_value(self, codes):
        """An OrtValue of the format's ONNX type holding ``codes`` (uint8 or int8 array)."""
        codes = np.ascontiguousarray(codes)
        if not self.fmt.is_float:
            return self._ort.OrtValue.ortvalue_from_numpy(codes.astype(np.int8, copy=False))
        return self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            codes.view(np.uint8), self.fmt.onnx_type)

    def run(self, x, scale):
        scale = np.asarray(scale, dtype=np.float32)
        feeds = {"scale": self._ort.OrtValue.ortvalue_from_numpy(scale)}
        if self.op == "dq":
            feeds["x"] = self._code_value(x)
        else:
            feeds["x"] = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, np.float32))
        out = self.session.run_with_ort_values(["y"], feeds)[0]
        if self.op == "q" and self.fmt.is_float:
            # FP8 outputs have no numpy dtype: read the raw bytes back.
            return _ortvalue_bytes(out)
        return out.numpy()


def _ortvalue_bytes(v):
    """uint8 view of an FP8 OrtValue's buffer."""
    import ctypes

    # onnxruntime has no numpy dtype for most FP8 types: copy the raw buffer.
    raw = ctypes.string_at(v.data_ptr(), v.tensor_size_in_bytes())
    return np.frombuffer(raw, dtype=np.uint8).reshape(v.shape())
