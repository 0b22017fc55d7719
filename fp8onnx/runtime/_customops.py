"""The ``ai.fp8onnx`` custom-op domain as ONNX Runtime C structures (struct OrtCustomOp).

Each op is an OrtCustomOp whose metadata callbacks and CreateKernelV2/KernelDestroy are
ctypes callbacks (run once per session, at creation and release) and whose
KernelComputeV2 is the Numba cfunc of _kernels.py (run on every inference, without the
GIL). CreateKernelV2 reads the node's attributes, rejects bad ones with an OrtStatus
naming the node and the fix, and builds the kernel state the cfunc reads.

The domain, the op structures and their callbacks are created once per process and
never freed: every session's options and kernels point at them, and freeing them while
any session lives would crash the process; they cost a few hundred bytes.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from ctypes import c_int, c_int64, c_size_t, c_void_p

import numpy as np

from .. import formats
from . import _capi, _kernels
from .ops import ATTRIBUTE_DEFAULTS, DEQUANTIZE, DOMAIN, FAKE_QUANT, QUANTIZE

__all__ = ["domain"]

log = logging.getLogger(__name__)

_FLOAT, _UINT8 = 1, 2  # ONNXTensorElementDataType
# op name -> (kernel kind, input types, output types)
_OPS = {
    FAKE_QUANT: (_kernels.FAKE_QUANT, (_FLOAT, _FLOAT), (_FLOAT,)),
    DEQUANTIZE: (_kernels.DEQUANTIZE, (_UINT8, _FLOAT), (_FLOAT,)),
    QUANTIZE: (_kernels.QUANTIZE, (_FLOAT, _FLOAT), (_UINT8,)),
}

_P = c_void_p
_GetStr = ctypes.CFUNCTYPE(_P, _P)
_GetType = ctypes.CFUNCTYPE(c_int, _P, c_size_t)
_GetCount = ctypes.CFUNCTYPE(c_size_t, _P)
_GetInt = ctypes.CFUNCTYPE(c_int, _P)
_CreateKernelV2 = ctypes.CFUNCTYPE(_P, _P, _P, _P, ctypes.POINTER(_P))
_KernelDestroy = ctypes.CFUNCTYPE(None, _P)
_GetMayInplace = ctypes.CFUNCTYPE(c_size_t, ctypes.POINTER(_P), ctypes.POINTER(_P))
_ReleaseMayInplace = ctypes.CFUNCTYPE(None, _P, _P)
_InferShape = ctypes.CFUNCTYPE(_P, _P, _P)
# Ops whose output may reuse the input's buffer, as (input, output) index pairs: the
# FakeQuant loops read x[i] before writing y[i] and nothing else, so y may be x. ONNX
# Runtime then writes in place when nothing else reads x and it knows that x and y have
# the same shape (hence _Op._infer_shape), which saves an allocation and a second
# buffer's worth of cache traffic per activation.
_MAY_INPLACE = {FAKE_QUANT: ((0, 0),)}


class OrtCustomOp(ctypes.Structure):
    """struct OrtCustomOp of onnxruntime_c_api.h (fields in header order)."""

    _fields_ = [("version", ctypes.c_uint32)] + [(name, _P) for name in (
        "CreateKernel", "GetName", "GetExecutionProviderType", "GetInputType",
        "GetInputTypeCount", "GetOutputType", "GetOutputTypeCount", "KernelCompute",
        "KernelDestroy", "GetInputCharacteristic", "GetOutputCharacteristic",
        "GetInputMemoryType", "GetVariadicInputMinArity", "GetVariadicInputHomogeneity",
        "GetVariadicOutputMinArity", "GetVariadicOutputHomogeneity", "CreateKernelV2",
        "KernelComputeV2", "InferOutputShapeFn", "GetStartVersion", "GetEndVersion",
        "GetMayInplace", "ReleaseMayInplace", "GetAliasMap", "ReleaseAliasMap")]


class _Op:
    """One OrtCustomOp with the ctypes objects it points to (all kept referenced here)."""

    def __init__(self, api, name: str, compute_address: int):
        self.api = api
        self.name = name
        self.kind, self.inputs, self.outputs = _OPS[name]
        self._name_buf = ctypes.create_string_buffer(name.encode())
        self._ep_buf = ctypes.create_string_buffer(b"CPUExecutionProvider")
        self.states = {}  # kernel state address -> (state array, message buffers)
        self.lock = threading.Lock()
        cb = self._callbacks = {
            "GetName": _GetStr(lambda op: ctypes.addressof(self._name_buf)),
            "GetExecutionProviderType": _GetStr(lambda op: ctypes.addressof(self._ep_buf)),
            "GetInputType": _GetType(lambda op, i: self.inputs[i]),
            "GetInputTypeCount": _GetCount(lambda op: len(self.inputs)),
            "GetOutputType": _GetType(lambda op, i: self.outputs[i]),
            "GetOutputTypeCount": _GetCount(lambda op: len(self.outputs)),
            "KernelDestroy": _KernelDestroy(self._destroy),
            "GetInputCharacteristic": _GetType(lambda op, i: 0),  # INPUT_OUTPUT_REQUIRED
            "GetOutputCharacteristic": _GetType(lambda op, i: 0),
            "GetInputMemoryType": _GetType(lambda op, i: 0),  # OrtMemTypeDefault
            "GetVariadicInputMinArity": _GetInt(lambda op: 1),
            "GetVariadicInputHomogeneity": _GetInt(lambda op: 1),
            "GetVariadicOutputMinArity": _GetInt(lambda op: 1),
            "GetVariadicOutputHomogeneity": _GetInt(lambda op: 1),
            "CreateKernelV2": _CreateKernelV2(self._create_kernel),
            "GetStartVersion": _GetInt(lambda op: 1),
            "GetEndVersion": _GetInt(lambda op: 2**31 - 1),
            "InferOutputShapeFn": _InferShape(self._infer_shape),
        }
        pairs = _MAY_INPLACE.get(name, ())
        if pairs:
            # ONNX Runtime reads the two arrays, then hands them back to ReleaseMayInplace;
            # they are ours and live as long as the op, so releasing is a no-op.
            self._inplace = [(ctypes.c_int * len(pairs))(*(p[k] for p in pairs)) for k in (0, 1)]

            def may_inplace(inputs, outputs):
                inputs[0] = ctypes.addressof(self._inplace[0])
                outputs[0] = ctypes.addressof(self._inplace[1])
                return len(pairs)

            cb["GetMayInplace"] = _GetMayInplace(may_inplace)
            cb["ReleaseMayInplace"] = _ReleaseMayInplace(lambda inputs, outputs: None)
        self.struct = OrtCustomOp(version=_capi.ORT_API_VERSION)
        for field, fn in cb.items():
            setattr(self.struct, field, ctypes.cast(fn, _P).value)
        self.struct.KernelComputeV2 = compute_address

    # -- shape inference: runs in Python while onnxruntime resolves the graph ------------
    def _infer_shape(self, op, context):
        """Output shape = input 0's shape. Without it the output's shape is unknown, and
        onnxruntime's memory planner only lets an op write over its input (MayInplace)
        when both shapes are known to be equal."""
        try:
            api = self.api
            info = ctypes.c_void_p()
            status = api.ShapeInferContext_GetInputTypeShape(context, 0, ctypes.byref(info))
            if status:  # no shape to give: inference is optional, so not an error
                api.ReleaseStatus(status)
                return None
            # ``info`` belongs to the context: not released here.
            rank = api.out(api.GetDimensionsCount, info.value, ctype=c_size_t)
            if rank == 0:  # a scalar and an unknown rank look alike here: say nothing
                return None
            dims = (ctypes.c_int64 * rank)()
            api.check(api.GetDimensions(info.value, dims, rank))
            names = (ctypes.c_char_p * rank)()
            api.check(api.GetSymbolicDimensions(info.value, names, rank))
            if any(d < 0 and not n for d, n in zip(dims, names)):
                # onnxruntime would write an unnamed unknown dim as dim_value -1
                return None
            return api.ShapeInferContext_SetOutputTypeShape(context, 0, info.value)
        except Exception as e:  # never let an exception cross into ONNX Runtime
            log.debug("custom op shape inference failed: %s", e)
            return None

    # -- kernel creation: runs in Python once per node, at session creation --------------
    def _attr_string(self, info, name):
        size = c_size_t(0)
        status = self.api.KernelInfoGetAttribute_string(info, name.encode(), None, ctypes.byref(size))
        if status:
            self.api.ReleaseStatus(status)
            return None
        buf = ctypes.create_string_buffer(size.value)
        self.api.check(self.api.KernelInfoGetAttribute_string(info, name.encode(), buf,
                                                              ctypes.byref(size)))
        return buf.value.decode()

    def _attr_int(self, info, name):
        value = c_int64(0)
        status = self.api.KernelInfoGetAttribute_int64(info, name.encode(), ctypes.byref(value))
        if status:
            self.api.ReleaseStatus(status)
            return ATTRIBUTE_DEFAULTS[name]
        return value.value

    def _node_name(self, info):
        size = c_size_t(0)
        status = self.api.KernelInfo_GetNodeName(info, None, ctypes.byref(size))
        if status:
            self.api.ReleaseStatus(status)
            return "?"
        buf = ctypes.create_string_buffer(size.value)
        self.api.check(self.api.KernelInfo_GetNodeName(info, buf, ctypes.byref(size)))
        return buf.value.decode()

    def _kernel_state(self, info):
        node = f"{DOMAIN}.{self.name} node {self._node_name(info)!r}"  # starts with _capi.OWN_MESSAGE_MARK
        name = self._attr_string(info, "format")
        if name is None:
            raise ValueError(f"{node} has no 'format' attribute: add format=<one of "
                             f"{', '.join(formats.names())}>")
        try:
            fmt = formats.get(name)
        except ValueError as e:
            raise ValueError(f"{node}: {e}") from e
        axis = self._attr_int(info, "axis")
        saturate = self._attr_int(info, "saturate")
        if saturate not in (0, 1):
            raise ValueError(f"{node}: saturate={saturate}, must be 0 or 1")
        messages = [ctypes.create_string_buffer(m.encode()) for m in (
            f"{node} (format {fmt.name}, axis {axis}): scale must be a scalar, a 1-element "
            f"tensor, or 1-D with length input.shape[axis]; fix the scale or the axis attribute",
            f"{node} (format {fmt.name}): every scale must be positive and finite (no 0, "
            f"negative, NaN or Inf); recompute the scale from a non-zero amax",
            f"{node}: axis {axis} is out of range for the input's rank; fix the axis attribute",
            f"{node}: input rank above {_kernels.MAX_RANK} is not supported",
        )]
        state = np.array([self.api.address, self.kind, fmt.kernel_id, axis, saturate]
                         + [ctypes.addressof(m) for m in messages] + [_kernels.chunk_address()],
                         dtype=np.int64)
        assert state.size == _kernels.STATE_SIZE
        return state, messages

    def _create_kernel(self, op, api, info, kernel_out):
        try:
            state, messages = self._kernel_state(info)
        except Exception as e:  # never let an exception cross into ONNX Runtime
            log.debug("custom op kernel creation failed: %s", e)
            return self.api.CreateStatus(_capi.ORT_INVALID_ARGUMENT, str(e).encode())
        address = state.ctypes.data
        with self.lock:
            self.states[address] = (state, messages)
        kernel_out[0] = address
        return None

    def _destroy(self, kernel):
        with self.lock:
            self.states.pop(kernel, None)


class _Domain:
    def __init__(self, api):
        compute = _kernels.compute_address()
        self.ops = [_Op(api, name, compute) for name in _OPS]
        self.handle = api.out(api.CreateCustomOpDomain, DOMAIN.encode())
        for op in self.ops:
            api.check(api.CustomOpDomain_Add(self.handle, ctypes.byref(op.struct)))

    def live_kernels(self) -> int:
        """Kernels created and not yet destroyed (one per custom node per live session)."""
        return sum(len(op.states) for op in self.ops)


_DOMAIN = None
_LOCK = threading.Lock()


def domain() -> _Domain:
    """The process-wide ``ai.fp8onnx`` domain (compiles the kernel on first use)."""
    global _DOMAIN
    with _LOCK:
        if _DOMAIN is None:
            _DOMAIN = _Domain(_capi.api())
        return _DOMAIN
