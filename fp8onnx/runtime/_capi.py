"""ctypes binding to the ONNX Runtime C API of the libonnxruntime the onnxruntime wheel ships.

Why ctypes and not ``register_custom_ops_library``: the Python wheel's extension module
links ONNX Runtime statically and only accepts custom ops from a shared library that
exports ``RegisterCustomOps``, which would need a C compiler at install time. The wheel
also ships ``capi/libonnxruntime.so.*`` with the full C API, so fp8onnx drives that
library directly: sessions, values and custom-op domains all come from it, and the
kernels are Numba ``@cfunc``s. Nothing is compiled at install time.

One fixed API version is asked for (:data:`ORT_API_VERSION`); the function-table
indices below are those of ``struct OrtApi`` in ``onnxruntime_c_api.h``, which only
ever grows at the end, so they hold for every later release.

>>> from fp8onnx.runtime import _capi
>>> _capi.api().version_string  # doctest: +SKIP
'1.32.0'
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from ctypes import POINTER, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_void_p

from ..errors import Fp8OnnxError, UserError

__all__ = ["ORT_API_VERSION", "MIN_ORT_VERSION", "OrtError", "OrtUserError", "OrtUnavailableError",
           "api", "library_path"]

#: The C API version fp8onnx is written against (onnxruntime 1.18's; every later release
#: serves it).
ORT_API_VERSION = 18
#: The first onnxruntime whose Linux wheel ships capi/libonnxruntime.so (1.18.0 has only
#: the Python extension, which exports no C API); checked on 1.18.0, 1.19.0, 1.20.0, 1.22.0.
MIN_ORT_VERSION = "1.19"

# ONNXTensorElementDataType / OrtErrorCode values used across the runtime package.
ORT_OK, ORT_FAIL, ORT_INVALID_ARGUMENT = 0, 1, 2
ERROR_NAMES = ("OK", "FAIL", "INVALID_ARGUMENT", "NO_SUCHFILE", "NO_MODEL", "ENGINE_ERROR",
               "RUNTIME_EXCEPTION", "INVALID_PROTOBUF", "MODEL_LOADED", "NOT_IMPLEMENTED",
               "INVALID_GRAPH", "EP_FAIL")
# Every message the ai.fp8onnx kernels return starts with this (see _customops.py).
OWN_MESSAGE_MARK = "ai.fp8onnx."
# Codes that mean "the model or the inputs are wrong", which the user fixes.
_USER_CODES = {2, 3, 4, 7, 10}

P = c_void_p
_SZ = POINTER(c_size_t)
_PP = POINTER(c_void_p)

# name: (index in struct OrtApi, restype, argtypes). Index = byte offset / 8.
_FUNCS = {
    "CreateStatus": (0, P, [c_int, c_char_p]),
    "GetErrorCode": (1, c_int, [P]),
    "GetErrorMessage": (2, c_char_p, [P]),
    "CreateEnv": (3, P, [c_int, c_char_p, _PP]),
    "CreateSession": (7, P, [P, P, P, _PP]),
    "CreateSessionFromArray": (8, P, [P, c_char_p, c_size_t, P, _PP]),
    "Run": (9, P, [P, P, P, P, c_size_t, P, c_size_t, P]),
    "CreateSessionOptions": (10, P, [_PP]),
    "SetOptimizedModelFilePath": (11, P, [P, P]),
    "SetSessionExecutionMode": (13, P, [P, c_int]),
    "EnableProfiling": (14, P, [P, P]),
    "EnableMemPattern": (16, P, [P]),
    "DisableMemPattern": (17, P, [P]),
    "EnableCpuMemArena": (18, P, [P]),
    "DisableCpuMemArena": (19, P, [P]),
    "SetSessionLogSeverityLevel": (22, P, [P, c_int]),
    "SetSessionGraphOptimizationLevel": (23, P, [P, c_int]),
    "SetIntraOpNumThreads": (24, P, [P, c_int]),
    "SetInterOpNumThreads": (25, P, [P, c_int]),
    "CreateCustomOpDomain": (26, P, [c_char_p, _PP]),
    "CustomOpDomain_Add": (27, P, [P, P]),
    "AddCustomOpDomain": (28, P, [P, P]),
    "SessionGetInputCount": (30, P, [P, _SZ]),
    "SessionGetOutputCount": (31, P, [P, _SZ]),
    "SessionGetInputTypeInfo": (33, P, [P, c_size_t, _PP]),
    "SessionGetOutputTypeInfo": (34, P, [P, c_size_t, _PP]),
    "SessionGetInputName": (36, P, [P, c_size_t, P, _PP]),
    "SessionGetOutputName": (37, P, [P, c_size_t, P, _PP]),
    "CreateRunOptions": (39, P, [_PP]),
    "RunOptionsSetRunLogSeverityLevel": (41, P, [P, c_int]),
    "RunOptionsSetRunTag": (42, P, [P, c_char_p]),
    "CreateTensorWithDataAsOrtValue": (49, P, [P, P, c_size_t, POINTER(c_int64), c_size_t, c_int, _PP]),
    "GetTensorMutableData": (51, P, [P, _PP]),
    "CastTypeInfoToTensorInfo": (55, P, [P, _PP]),
    "GetOnnxTypeFromTypeInfo": (56, P, [P, POINTER(c_int)]),
    "GetTensorElementType": (60, P, [P, POINTER(c_int)]),
    "GetDimensionsCount": (61, P, [P, _SZ]),
    "GetDimensions": (62, P, [P, POINTER(c_int64), c_size_t]),
    "GetSymbolicDimensions": (63, P, [P, POINTER(c_char_p), c_size_t]),
    "GetTensorTypeAndShape": (65, P, [P, _PP]),
    "GetValueType": (67, P, [P, POINTER(c_int)]),
    "CreateCpuMemoryInfo": (69, P, [c_int, c_int, _PP]),
    "AllocatorFree": (76, P, [P, P]),
    "GetAllocatorWithDefaultOptions": (78, P, [_PP]),
    "KernelInfoGetAttribute_int64": (86, P, [P, c_char_p, POINTER(c_int64)]),
    "KernelInfoGetAttribute_string": (87, P, [P, c_char_p, P, _SZ]),
    "ReleaseEnv": (92, None, [P]),
    "ReleaseStatus": (93, None, [P]),
    "ReleaseMemoryInfo": (94, None, [P]),
    "ReleaseSession": (95, None, [P]),
    "ReleaseValue": (96, None, [P]),
    "ReleaseRunOptions": (97, None, [P]),
    "ReleaseTypeInfo": (98, None, [P]),
    "ReleaseTensorTypeAndShapeInfo": (99, None, [P]),
    "ReleaseSessionOptions": (100, None, [P]),
    "SessionEndProfiling": (110, P, [P, P, _PP]),
    "SessionGetModelMetadata": (111, P, [P, _PP]),
    "ModelMetadataGetProducerName": (112, P, [P, P, _PP]),
    "ModelMetadataGetGraphName": (113, P, [P, P, _PP]),
    "ModelMetadataGetDomain": (114, P, [P, P, _PP]),
    "ModelMetadataGetDescription": (115, P, [P, P, _PP]),
    "ModelMetadataLookupCustomMetadataMap": (116, P, [P, P, c_char_p, _PP]),
    "ModelMetadataGetVersion": (117, P, [P, POINTER(c_int64)]),
    "ReleaseModelMetadata": (118, None, [P]),
    "ModelMetadataGetCustomMetadataMapKeys": (123, P, [P, P, POINTER(_PP), POINTER(c_int64)]),
    "AddSessionConfigEntry": (130, P, [P, c_char_p, c_char_p]),
    "ModelMetadataGetGraphDescription": (158, P, [P, P, _PP]),
    "KernelInfo_GetNodeName": (244, P, [P, P, _SZ]),
    "ShapeInferContext_GetInputTypeShape": (268, P, [P, c_size_t, _PP]),
    "ShapeInferContext_SetOutputTypeShape": (270, P, [P, c_size_t, P]),
    # Called from the Numba kernels through the table address, listed for the record.
    "KernelContext_GetInput": (90, P, [P, c_size_t, _PP]),
    "KernelContext_GetOutput": (91, P, [P, c_size_t, POINTER(c_int64), c_size_t, _PP]),
    "KernelContext_ParallelFor": (274, P, [P, P, c_size_t, c_size_t, P]),
}

class OrtError(Fp8OnnxError, RuntimeError):
    """ONNX Runtime reported a failure; ``code`` is its OrtErrorCode name."""

    def __init__(self, message: str, code: str = "FAIL"):
        super().__init__(message)
        self.code = code


class OrtUserError(OrtError, UserError):
    """ONNX Runtime rejected the model or the inputs (bad graph, bad attribute, bad feed)."""


class OrtUnavailableError(OrtError):
    """The onnxruntime installation lacks the C library or the API version fp8onnx needs."""


def library_path() -> str:
    """Path of the libonnxruntime shared library inside the installed onnxruntime wheel."""
    import onnxruntime

    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    patterns = {"win32": ["onnxruntime.dll"], "darwin": ["libonnxruntime*.dylib"]}.get(
        sys.platform, ["libonnxruntime.so*"])
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(capi, pattern)))
        if hits:
            return hits[-1]
    raise OrtUnavailableError(
        f"no ONNX Runtime C library (libonnxruntime) in {capi}: fp8onnx.runtime needs an "
        f"official onnxruntime wheel >= {MIN_ORT_VERSION}; run "
        f"`pip install -U 'onnxruntime>={MIN_ORT_VERSION}'`", code="NO_SUCHFILE")


class _OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.CFUNCTYPE(c_void_p, c_uint32)),
                ("GetVersionString", ctypes.CFUNCTYPE(c_char_p))]


class Api:
    """The OrtApi function table as ctypes functions: ``api().CreateEnv(...)``.

    Also owns the process-wide OrtEnv, CPU memory info and default allocator, which
    live as long as the process (ONNX Runtime keeps one environment per process).
    """

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.OrtGetApiBase.restype = POINTER(_OrtApiBase)
        base = self.lib.OrtGetApiBase().contents
        self.version_string = base.GetVersionString().decode()
        addr = base.GetApi(ORT_API_VERSION)
        if not addr:
            raise OrtUnavailableError(
                f"onnxruntime {self.version_string} at {path} does not provide C API version "
                f"{ORT_API_VERSION}: fp8onnx.runtime needs onnxruntime>={MIN_ORT_VERSION}; "
                f"run `pip install -U 'onnxruntime>={MIN_ORT_VERSION}'`", code="NOT_IMPLEMENTED")
        self.address = addr
        table = (c_void_p * (1 + max(i for i, _, _ in _FUNCS.values()))).from_address(addr)
        for name, (index, restype, argtypes) in _FUNCS.items():
            setattr(self, name, ctypes.CFUNCTYPE(restype, *argtypes)(table[index]))
        # ORT_LOGGING_LEVEL_FATAL: failures reach the caller as exceptions, not as logs too.
        self.env = self.out(self.CreateEnv, 4, b"fp8onnx")
        # OrtDeviceAllocator (0), OrtMemTypeDefault (0): describes caller-owned CPU memory,
        # which is all CreateTensorWithDataAsOrtValue needs.
        self.cpu_memory_info = self.out(self.CreateCpuMemoryInfo, 0, 0)
        self.allocator = self.out(self.GetAllocatorWithDefaultOptions)

    def check(self, status) -> None:
        """Raise OrtError (OrtUserError for input problems) if ``status`` is not NULL."""
        if not status:
            return
        code = self.GetErrorCode(status)
        message = self.GetErrorMessage(status).decode(errors="replace")
        self.ReleaseStatus(status)
        name = ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else str(code)
        mark = message.find(OWN_MESSAGE_MARK)
        if mark >= 0:
            # One of our kernels' own messages (ONNX Runtime may wrap it, e.g. as
            # "Exception during initialization: ..."): it names the node and the fix.
            raise OrtUserError(message[mark:], code=name)
        cls = OrtUserError if code in _USER_CODES else OrtError
        raise cls(f"onnxruntime {name}: {message}", code=name)

    def out(self, fn, *args, ctype=c_void_p):
        """Call ``fn(*args, &out)``, check the status, return ``out.value``."""
        result = ctype()
        self.check(fn(*args, ctypes.byref(result)))
        return result.value

    def take_string(self, address) -> str:
        """Decode a string ONNX Runtime allocated with the default allocator, and free it."""
        if not address:
            return ""
        try:
            return ctypes.string_at(address).decode(errors="replace")
        finally:
            self.check(self.AllocatorFree(self.allocator, address))


_API = None
_LOCK = threading.Lock()


def api() -> Api:
    """The process-wide :class:`Api`, loaded on first use."""
    global _API
    with _LOCK:
        if _API is None:
            _API = Api(library_path())
        return _API
