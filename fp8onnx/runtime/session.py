"""``InferenceSession``: an ONNX Runtime session that also runs the ``ai.fp8onnx`` ops.

Built on ONNX Runtime's C API (see _capi.py for why), with the same ``run``,
``get_inputs``, ``get_outputs``, ``get_modelmeta`` and ``get_providers`` as
``onnxruntime.InferenceSession``. Inputs are passed to ONNX Runtime without a copy and
outputs come back as numpy arrays over ONNX Runtime's own buffers (no copy either; the
buffer is released when the array is). ``run`` releases the GIL, so threads may run one
session at the same time.

>>> import numpy as np, onnx
>>> from onnx import helper, TensorProto as T
>>> from fp8onnx.runtime import InferenceSession, ops
>>> node = ops.make_fake_quant_node("x", "s", "y", format="e4m3")
>>> graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", T.FLOAT, [2])],
...     [helper.make_tensor_value_info("y", T.FLOAT, [2])], [helper.make_tensor("s", T.FLOAT, [], [1.0])])
>>> model = helper.make_model(graph, ir_version=10,
...     opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])
>>> InferenceSession(model).run(None, {"x": np.array([0.3, 500.0], np.float32)})[0].tolist()
[0.3125, 448.0]
"""
from __future__ import annotations

import ctypes
import os
from ctypes import c_char_p, c_int, c_int64, c_size_t, c_void_p
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import _capi
from .fold import fold_constant_ops
from .layout import may_reorder_fake_quants, optimized_blocked_model

__all__ = ["InferenceSession", "NodeArg", "ModelMetadata", "FP8_UNSAFE_OPTIMIZERS"]

# ONNXTensorElementDataType <-> numpy / onnxruntime's type strings.
_ELEMENT = {1: ("float", np.float32), 2: ("uint8", np.uint8), 3: ("int8", np.int8),
            4: ("uint16", np.uint16), 5: ("int16", np.int16), 6: ("int32", np.int32),
            7: ("int64", np.int64), 8: ("string", None), 9: ("bool", np.bool_),
            10: ("float16", np.float16), 11: ("double", np.float64), 12: ("uint32", np.uint32),
            13: ("uint64", np.uint64), 16: ("bfloat16", None), 17: ("float8e4m3fn", None),
            18: ("float8e4m3fnuz", None), 19: ("float8e5m2", None), 20: ("float8e5m2fnuz", None)}
_FROM_NUMPY = {np.dtype(t): code for code, (_, t) in _ELEMENT.items() if t is not None}
_ONNX_TYPES = {0: "unknown", 1: "tensor", 2: "seq", 3: "map", 4: "opaque", 5: "sparse_tensor",
               6: "optional"}
_OPT_LEVELS = {"ORT_DISABLE_ALL": 0, "ORT_ENABLE_BASIC": 1, "ORT_ENABLE_EXTENDED": 2,
               "ORT_ENABLE_LAYOUT": 3, "ORT_ENABLE_ALL": 99}


@dataclass(frozen=True)
class NodeArg:
    """An input or output: ``name``, ``type`` ('tensor(float)'), ``shape`` (ints, str or None)."""

    name: str
    type: str
    shape: list


@dataclass(frozen=True)
class ModelMetadata:
    """What ``get_modelmeta()`` returns, as in onnxruntime."""

    producer_name: str
    graph_name: str
    domain: str
    description: str
    graph_description: str
    version: int
    custom_metadata_map: dict = field(default_factory=dict)


class _OutputBuffer:
    """Owns one ONNX Runtime output value; numpy arrays made from it keep it alive."""

    __slots__ = ("__array_interface__", "_value", "_release")

    def __init__(self, api, value, data, shape, dtype):
        self._value = value
        self._release = api.ReleaseValue
        self.__array_interface__ = {"data": (data or 0, False), "shape": tuple(shape),
                                    "typestr": np.dtype(dtype).str, "version": 3}

    def __del__(self):
        release, self._release = self._release, None
        if release is not None and self._value:
            release(self._value)


#: Session config entries carried over from an ``onnxruntime.SessionOptions``: the ones
#: fp8onnx itself sets (threads that do not spin between runs, when two sessions alternate).
_CONFIG_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _os_path(path):
    """A path as ONNX Runtime's ORTCHAR_T string: wchar_t on Windows, char elsewhere."""
    return ctypes.c_wchar_p(os.fspath(path)) if os.name == "nt" else c_char_p(os.fsencode(path))


def _proto(model):
    """``model``'s ModelProto, or None for a missing path (reported by _create) or a path
    with external data (resolved relative to the path, so the path is what runs)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.exists(path):
        return None
    proto = onnx.load(path, load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return None
    return proto


def _folded(model):
    """``(model, proto)``: ``model`` with constant ai.fp8onnx nodes folded (as given when
    none), and its ModelProto when one was read (None for a path with external data)."""
    proto = _proto(model)
    if proto is None:
        return model, None
    result, n = fold_constant_ops(proto)
    return (result if n else model), result


def _level(so) -> int:
    """The C API's GraphOptimizationLevel of ``so`` (ORT_ENABLE_ALL when None)."""
    if so is None:
        return 99
    level = so.graph_optimization_level
    return _OPT_LEVELS.get(getattr(level, "name", ""), int(getattr(level, "value", 99)))


def _optimizes_layout(so) -> bool:
    """Whether ``so`` lets ONNX Runtime run its layout (NCHWc) transformer."""
    return _level(so) >= 3


#: onnxruntime rewrites that are only valid for integer Q/DQ and change FP8 results: e.g.
#: ReluQuantRewrite drops a Relu in front of a QuantizeLinear whose zero point is 0 (right
#: for uint8, wrong for FP8, which is signed; measured on onnxruntime 1.32, see tests).
FP8_UNSAFE_OPTIMIZERS = ("ReluQuantRewrite", "ClipQuantRewrite", "WeightBiasQuantization")


class InferenceSession:
    """Run an ONNX model with the fp8onnx custom ops registered (CPU).

    ``model_or_path``: a path, serialized bytes or an ``onnx.ModelProto``.
    ``sess_options``: an ``onnxruntime.SessionOptions``; its thread counts, execution
    mode, graph optimization level, log level, memory-arena and memory-pattern settings
    are applied. ``providers``: only ``CPUExecutionProvider`` (the custom ops are CPU).
    ``fold_constants``: compute ai.fp8onnx nodes whose inputs are all initializers (the
    fake-quantized weights) once, at creation, so ONNX Runtime sees constant weights
    and pre-packs them (see :mod:`fp8onnx.runtime.fold`); results are bit-identical.
    ``disabled_optimizers``: names of ONNX Runtime graph rewrites to skip, as in
    onnxruntime; by default :data:`FP8_UNSAFE_OPTIMIZERS`, the rewrites that change the
    result of FP8 Q/DQ graphs (pass ``()`` to keep every rewrite).
    ``blocked_fake_quant``: when the model has activation FakeQuants and every graph
    optimization is on, let them run on ONNX Runtime's channel-blocked (NCHWc) tensors
    instead of reordering each one out of and back into that layout around every Conv
    (see :mod:`fp8onnx.runtime.layout`; costs a second graph optimization at creation,
    results are bit-identical).
    Errors raise :class:`fp8onnx.runtime.OrtError` (``OrtUserError``, a ``UserError``,
    when the model or the inputs are at fault), with ONNX Runtime's message.
    """

    def __init__(self, model_or_path, sess_options=None, providers=None, provider_options=None,
                 *, fold_constants=True, disabled_optimizers=FP8_UNSAFE_OPTIMIZERS,
                 blocked_fake_quant=True, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        for p in providers or ():
            name = p[0] if isinstance(p, tuple) else p
            if name != "CPUExecutionProvider":
                raise ValueError(f"provider {name!r} is not supported: fp8onnx's custom ops run on "
                                 f"CPU; pass providers=['CPUExecutionProvider'] or None")
        from . import _customops  # imports Numba; compiles the kernel on first use

        self._api = api = _capi.api()
        self._domain = _customops.domain()  # keeps the op structures alive with the session
        self._session = None
        #: How many FakeQuant nodes run on blocked tensors (see ``blocked_fake_quant``).
        self.blocked_fake_quants = 0
        proto = None  # read to look for FakeQuants (folding leaves activation ones alone)
        if fold_constants:
            model_or_path, proto = _folded(model_or_path)
        elif blocked_fake_quant:
            proto = _proto(model_or_path)  # only read: no weight decoded that nothing uses
        options = api.out(api.CreateSessionOptions)
        try:
            self._apply_options(options, sess_options)
            self._common_options(options, disabled_optimizers)
            if (blocked_fake_quant and proto is not None and _optimizes_layout(sess_options)
                    and may_reorder_fake_quants(proto)):
                blocked, self.blocked_fake_quants = optimized_blocked_model(
                    api, model_or_path, level=_level(sess_options),
                    arena=sess_options is None or sess_options.enable_cpu_mem_arena,
                    configure=lambda o: self._common_options(o, disabled_optimizers),
                    create=self._create, path_arg=_os_path)
                if blocked is not None:
                    # The graph is ONNX Runtime's own optimized one: optimizing it again
                    # would only redo the work.
                    model_or_path = blocked
                    api.check(api.SetSessionGraphOptimizationLevel(options, 0))
            self._session = self._create(options, model_or_path)
        finally:
            api.ReleaseSessionOptions(options)
        self._inputs = self._args(api.SessionGetInputCount, api.SessionGetInputName,
                                  api.SessionGetInputTypeInfo)
        self._outputs = self._args(api.SessionGetOutputCount, api.SessionGetOutputName,
                                   api.SessionGetOutputTypeInfo)
        self._output_names = [a.name for a in self._outputs]
        self._name_arrays = {}

    # -- creation ------------------------------------------------------------------------
    def _common_options(self, options, disabled_optimizers):
        api = self._api
        if disabled_optimizers:
            # What onnxruntime.InferenceSession(disabled_optimizers=...) does, as a
            # session config entry the C API accepts.
            api.check(api.AddSessionConfigEntry(options, b"optimization.disable_specified_optimizers",
                                                ";".join(disabled_optimizers).encode()))
        api.check(api.AddCustomOpDomain(options, self._domain.handle))

    def _apply_options(self, options, so):
        api = self._api
        if so is None:
            # Quiet like the environment: errors come back as exceptions (see _capi).
            api.check(api.SetSessionLogSeverityLevel(options, 4))
            return
        api.check(api.SetIntraOpNumThreads(options, int(so.intra_op_num_threads)))
        api.check(api.SetInterOpNumThreads(options, int(so.inter_op_num_threads)))
        api.check(api.SetSessionExecutionMode(options, int(getattr(so.execution_mode, "value",
                                                                   so.execution_mode))))
        api.check(api.SetSessionGraphOptimizationLevel(options, _level(so)))
        api.check(api.SetSessionLogSeverityLevel(options, int(so.log_severity_level)))
        for key in _CONFIG_KEYS:  # the python options keep their config entries out of sight
            try:
                value = so.get_session_config_entry(key)
            except Exception:  # not set
                continue
            api.check(api.AddSessionConfigEntry(options, key.encode(), str(value).encode()))
        if not so.enable_cpu_mem_arena:
            api.check(api.DisableCpuMemArena(options))
        if not so.enable_mem_pattern:
            api.check(api.DisableMemPattern(options))
        if so.enable_profiling:
            prefix = so.profile_file_prefix or "onnxruntime_profile_"
            self._profile_prefix = _os_path(prefix)
            api.check(api.EnableProfiling(options, self._profile_prefix))
        if so.optimized_model_filepath:
            self._optimized_path = _os_path(so.optimized_model_filepath)
            api.check(api.SetOptimizedModelFilePath(options, self._optimized_path))

    def _create(self, options, model):
        api = self._api
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            return api.out(api.CreateSessionFromArray, api.env, data, len(data), options)
        path = os.fspath(model)
        if not os.path.exists(path):
            raise _capi.OrtUserError(f"model file {path!r} does not exist: pass an existing "
                                     f".onnx path, bytes or an onnx.ModelProto", code="NO_SUCHFILE")
        return api.out(api.CreateSession, api.env, _os_path(path), options)

    def _args(self, count_fn, name_fn, type_fn):
        api, sess = self._api, self._session
        n = api.out(count_fn, sess, ctype=c_size_t)
        args = []
        for i in range(n):
            name = api.take_string(api.out(name_fn, sess, i, api.allocator))
            type_info = api.out(type_fn, sess, i)
            try:
                args.append(NodeArg(name, *self._describe(type_info)))
            finally:
                api.ReleaseTypeInfo(type_info)
        return args

    def _describe(self, type_info):
        api = self._api
        kind = api.out(api.GetOnnxTypeFromTypeInfo, type_info, ctype=c_int)
        if kind != 1:
            return _ONNX_TYPES.get(kind, "unknown"), []
        info = api.out(api.CastTypeInfoToTensorInfo, type_info)  # owned by type_info
        elem = api.out(api.GetTensorElementType, info, ctype=c_int)
        rank = api.out(api.GetDimensionsCount, info, ctype=c_size_t)
        dims = (c_int64 * rank)()
        syms = (c_char_p * rank)()
        api.check(api.GetDimensions(info, dims, rank))
        api.check(api.GetSymbolicDimensions(info, syms, rank))
        shape = [d if d >= 0 else ((s.decode() or None) if s else None) for d, s in zip(dims, syms)]
        return f"tensor({_ELEMENT.get(elem, (str(elem),))[0]})", shape

    # -- onnxruntime.InferenceSession's interface ------------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def end_profiling(self) -> str:
        """Stop profiling (``sess_options.enable_profiling``); the JSON trace's file name."""
        api = self._api
        return api.take_string(api.out(api.SessionEndProfiling, self._session, api.allocator))

    def get_modelmeta(self) -> ModelMetadata:
        api = self._api
        md = api.out(api.SessionGetModelMetadata, self._session)
        try:
            def text(fn):
                return api.take_string(api.out(fn, md, api.allocator))

            keys_p, nkeys = ctypes.POINTER(c_void_p)(), c_int64(0)
            api.check(api.ModelMetadataGetCustomMetadataMapKeys(md, api.allocator,
                                                                 ctypes.byref(keys_p), ctypes.byref(nkeys)))
            custom = {}
            if keys_p:
                keys = [api.take_string(keys_p[i]) for i in range(nkeys.value)]
                api.check(api.AllocatorFree(api.allocator, ctypes.cast(keys_p, c_void_p)))
                for k in keys:
                    custom[k] = api.take_string(api.out(api.ModelMetadataLookupCustomMetadataMap,
                                                        md, api.allocator, k.encode()))
            return ModelMetadata(
                text(api.ModelMetadataGetProducerName), text(api.ModelMetadataGetGraphName),
                text(api.ModelMetadataGetDomain), text(api.ModelMetadataGetDescription),
                text(api.ModelMetadataGetGraphDescription),
                api.out(api.ModelMetadataGetVersion, md, ctype=c_int64), custom)
        finally:
            api.ReleaseModelMetadata(md)

    def _names(self, names):
        """A C array of the encoded ``names``, cached (ONNX Runtime only reads it)."""
        key = tuple(names)
        arr = self._name_arrays.get(key)
        if arr is None:
            arr = self._name_arrays[key] = (c_char_p * len(key))(*[k.encode() for k in key])
        return arr

    def run(self, output_names, input_feed, run_options=None):
        """Outputs named by ``output_names`` (all when None) for the ``input_feed`` dict."""
        if run_options is not None:
            raise ValueError("run_options are not supported by fp8onnx.runtime: pass None")
        api = self._api
        names = list(output_names) if output_names else self._output_names
        arrays, values = [], []
        try:
            for name, value in input_feed.items():
                arr = np.asarray(value, order="C")  # not ascontiguousarray: it makes 0-d 1-d
                code = _FROM_NUMPY.get(arr.dtype)
                if code is None:
                    raise ValueError(f"input {name!r} has dtype {arr.dtype}, which fp8onnx.runtime "
                                     f"cannot pass; convert it to the model's input type")
                arrays.append(arr)
                values.append(api.out(api.CreateTensorWithDataAsOrtValue, api.cpu_memory_info,
                                      arr.ctypes.data, arr.nbytes, (c_int64 * arr.ndim)(*arr.shape),
                                      arr.ndim, code))
            out_values = (c_void_p * len(names))()
            api.check(api.Run(self._session, None, self._names(input_feed), (c_void_p * len(values))(*values),
                              len(values), self._names(names), len(names), out_values))
        finally:
            for v in values:
                api.ReleaseValue(v)
        results = []
        try:
            for i, value in enumerate(out_values):
                results.append(self._to_numpy(value, names[i]))
        except Exception:
            for value in out_values[len(results) + 1:]:
                api.ReleaseValue(value)
            raise
        return results

    def _to_numpy(self, value, name):
        """An array over the output ``value``'s buffer; releases ``value`` on failure."""
        api = self._api
        info = c_void_p()
        status = api.GetTensorTypeAndShape(value, ctypes.byref(info))
        try:
            if status:
                api.ReleaseStatus(status)
                raise _capi.OrtError(f"output {name!r} is not a tensor: fp8onnx.runtime returns "
                                     f"tensors only", code="NOT_IMPLEMENTED")
            elem = api.out(api.GetTensorElementType, info, ctype=c_int)
            dtype = _ELEMENT.get(elem, (None, None))[1]
            if dtype is None:
                raise _capi.OrtError(f"output {name!r} has element type "
                                     f"{_ELEMENT.get(elem, (elem,))[0]}, which fp8onnx.runtime "
                                     f"does not return", code="NOT_IMPLEMENTED")
            rank = api.out(api.GetDimensionsCount, info, ctype=c_size_t)
            dims = (c_int64 * rank)()
            api.check(api.GetDimensions(info, dims, rank))
            data = api.out(api.GetTensorMutableData, value)
        except Exception:
            api.ReleaseValue(value)
            raise
        finally:
            if info:
                api.ReleaseTensorTypeAndShapeInfo(info)
        # ONNX Runtime's tensors hold their allocator, so the array may outlive the session.
        return np.asarray(_OutputBuffer(api, value, data, list(dims), dtype))

    def __del__(self):
        session, self._session = getattr(self, "_session", None), None
        if session:
            self._api.ReleaseSession(session)
