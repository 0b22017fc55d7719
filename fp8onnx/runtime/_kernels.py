"""The custom ops' KernelComputeV2 as Numba ``@cfunc``s: native code, no GIL, no Python.

ONNX Runtime calls :func:`compute_address` 's function as
``OrtStatus* KernelComputeV2(void* kernel_state, OrtKernelContext* context)``. The
kernel state (built in _customops.py) is a small int64 array::

    [0] address of the OrtApi function table   [1] op kind (FAKE_QUANT, DEQUANTIZE, QUANTIZE)
    [2] format kernel_id   [3] axis   [4] saturate
    [5..8] addresses of the NUL-terminated error messages (scale shape, scale value,
           axis, rank), each naming the node, so failures go back through CreateStatus
    [9] address of the chunk worker handed to KernelContext_ParallelFor

The work is cut into chunks of ~64K elements run by ONNX Runtime's intra-op thread pool
(inline, one after the other, when the session has one thread); the loops are
element-wise, so the result does not depend on the cut.

The function reads its inputs through the OrtApi table whose address it is given,
rather than through addresses frozen at compile time, so the compiled code does not
depend on where libonnxruntime was loaded. The arithmetic is fp8onnx.kernels' loops
(one implementation for the package); this module only binds them to the C API.
"""
from __future__ import annotations

import threading

import numpy as np

from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..kernels import _cast as _k  # the package's loops: one implementation of the arithmetic

__all__ = ["FAKE_QUANT", "DEQUANTIZE", "QUANTIZE", "STATE_SIZE", "MAX_RANK", "compute_address",
           "chunk_address"]

FAKE_QUANT, DEQUANTIZE, QUANTIZE = 0, 1, 2
STATE_SIZE = 10
JOB_SIZE = 12
_CHUNK = 1 << 16  # elements per ParallelFor task: large enough to amortise scheduling
MAX_RANK = 16
ORT_INVALID_ARGUMENT = 2

# Indices in struct OrtApi (see _capi._FUNCS, where every index is listed).
_CREATE_STATUS = 0
_GET_TENSOR_MUTABLE_DATA = 51
_GET_DIMENSIONS_COUNT = 61
_GET_DIMENSIONS = 62
_GET_TENSOR_TYPE_AND_SHAPE = 65
_GET_INPUT = 90
_GET_OUTPUT = 91
_RELEASE_TENSOR_TYPE_AND_SHAPE = 99
_PARALLEL_FOR = 274
_API_TABLE_LEN = 280


# ---- intrinsics: the few pointer operations Python-level Numba does not offer -------------
def _codegen_call(context, builder, sig, args):
    """Call the C function at address args[0] with 64-bit integer arguments (the SysV and
    AAPCS64 ABIs pass pointers, size_t and int the same way in registers)."""
    i64 = ir.IntType(64)
    fnty = ir.FunctionType(i64, [i64] * (len(args) - 1))
    fn = builder.inttoptr(args[0], fnty.as_pointer())
    cargs = [context.cast(builder, a, t, types.uint64) for a, t in zip(args[1:], sig.args[1:])]
    return builder.call(fn, cargs)


@intrinsic
def _call2(typingctx, fn, a, b):
    return types.uint64(fn, a, b), _codegen_call


@intrinsic
def _call3(typingctx, fn, a, b, c):
    return types.uint64(fn, a, b, c), _codegen_call


@intrinsic
def _call5(typingctx, fn, a, b, c, d, e):
    return types.uint64(fn, a, b, c, d, e), _codegen_call


def _pointer_cast(nbtype):
    @intrinsic
    def cast(typingctx, addr):
        sig = types.CPointer(nbtype)(addr)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return cast


_f32p = _pointer_cast(types.float32)
_u8p = _pointer_cast(types.uint8)
_i64p = _pointer_cast(types.int64)
_u64p = _pointer_cast(types.uint64)


@intrinsic
def _stack_i64(typingctx, n):
    """int64[n] on the stack (entry block, so loops do not grow it)."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    sig = types.CPointer(types.int64)(n)

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, ir.IntType(64), size=n.literal_value)

    return sig, codegen


@intrinsic
def _address(typingctx, ptr):
    if not isinstance(ptr, types.CPointer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.uint64(ptr), codegen


# ---- the kernel ---------------------------------------------------------------------------
@njit(inline="always")
def _shape(api, value, dims_addr, slot_addr):
    """Rank of the tensor ``value`` with its dims written at dims_addr; (status, rank)."""
    st = _call2(api[_GET_TENSOR_TYPE_AND_SHAPE], value, slot_addr)
    if st != 0:
        return st, np.int64(0)
    info = carray(_u64p(slot_addr), 1)[0]
    st = _call2(api[_GET_DIMENSIONS_COUNT], info, slot_addr)
    rank = carray(_i64p(slot_addr), 1)[0]
    if st == 0 and rank <= MAX_RANK:
        st = _call3(api[_GET_DIMENSIONS], info, dims_addr, rank)
    _call2(api[_RELEASE_TENSOR_TYPE_AND_SHAPE], info, 0)
    return st, rank


@njit(inline="always")
def _fail(api, message_addr):
    return _call2(api[_CREATE_STATUS], ORT_INVALID_ARGUMENT, message_addr)


@njit(inline="always")
def _run_block(kind, fmt_id, saturate, per_axis, x_addr, y_addr, outer, channels, inner,
               scale_addr):
    """The package's loop for one contiguous block: (outer, channels, inner) elements."""
    n = outer * channels * inner
    shape = (outer, channels, inner)
    if kind == FAKE_QUANT:
        if per_axis:
            _k.fake_quant_axis(carray(_f32p(x_addr), shape), carray(_f32p(scale_addr), channels),
                               saturate, fmt_id, carray(_f32p(y_addr), shape))
        else:
            _k.fake_quant_tensor(carray(_f32p(x_addr), n), carray(_f32p(scale_addr), 1)[0],
                                 saturate, fmt_id, carray(_f32p(y_addr), n))
    elif kind == DEQUANTIZE:
        if per_axis:
            _k.dequantize_axis(carray(_u8p(x_addr), shape), carray(_f32p(scale_addr), channels),
                               fmt_id, carray(_f32p(y_addr), shape))
        else:
            _k.dequantize_tensor(carray(_u8p(x_addr), n), carray(_f32p(scale_addr), 1)[0],
                                 fmt_id, carray(_f32p(y_addr), n))
    else:
        if per_axis:
            _k.quantize_axis(carray(_f32p(x_addr), shape), carray(_f32p(scale_addr), channels),
                             saturate, fmt_id, carray(_u8p(y_addr), shape))
        else:
            _k.quantize_tensor(carray(_f32p(x_addr), n), carray(_f32p(scale_addr), 1)[0],
                               saturate, fmt_id, carray(_u8p(y_addr), n))


def _chunk_impl(job_addr, i):
    """Chunk ``i`` of the job (see _compute): ``void fn(void* job, size_t i)`` for ParallelFor."""
    job = carray(_i64p(job_addr), JOB_SIZE)
    kind, fmt_id, saturate, mode = job[0], job[1], job[2] != 0, job[3]
    x_addr, y_addr, units, per_chunk = job[4], job[5], job[6], job[7]
    scale_addr, channels, inner = job[8], job[10], job[11]
    in_size = 1 if kind == DEQUANTIZE else 4
    out_size = 1 if kind == QUANTIZE else 4
    lo = np.int64(i) * per_chunk
    hi = min(units, lo + per_chunk)
    if mode == 0:  # per tensor: units are elements
        _run_block(kind, fmt_id, saturate, False, x_addr + lo * in_size, y_addr + lo * out_size,
                   hi - lo, 1, 1, scale_addr)
    elif mode == 1:  # per axis: units are (channels, inner) slabs
        slab = channels * inner
        _run_block(kind, fmt_id, saturate, True, x_addr + lo * slab * in_size,
                   y_addr + lo * slab * out_size, hi - lo, channels, inner, scale_addr)
    else:  # per axis with outer == 1: units are channels
        _run_block(kind, fmt_id, saturate, True, x_addr + lo * inner * in_size,
                   y_addr + lo * inner * out_size, 1, hi - lo, inner, scale_addr + lo * 4)


def _compute(state_addr, context):
    st_ = carray(_i64p(state_addr), STATE_SIZE)
    api = carray(_u64p(st_[0]), _API_TABLE_LEN)
    kind, fmt_id, axis = st_[1], st_[2], st_[3]
    slots_p = _stack_i64(4)
    dims_p = _stack_i64(MAX_RANK)
    sdims_p = _stack_i64(MAX_RANK)
    slots = carray(slots_p, 4)
    slot0 = _address(slots_p)
    # inputs: x (or codes) and scale
    status = _call3(api[_GET_INPUT], context, 0, slot0)
    if status != 0:
        return status
    x_value = slots[0]
    status = _call3(api[_GET_INPUT], context, 1, slot0)
    if status != 0:
        return status
    s_value = slots[0]
    status, rank = _shape(api, x_value, _address(dims_p), slot0)
    if status != 0:
        return status
    if rank > MAX_RANK:
        return _fail(api, st_[8])
    status, srank = _shape(api, s_value, _address(sdims_p), slot0)
    if status != 0:
        return status
    dims = carray(dims_p, MAX_RANK)
    sdims = carray(sdims_p, MAX_RANK)
    if srank > 1:
        return _fail(api, st_[5])
    nscale = 1
    if srank == 1:
        nscale = sdims[0]
    per_axis = nscale != 1
    outer, channels, inner = 1, 1, 1
    if per_axis:
        ax = axis + rank if axis < 0 else axis
        if ax < 0 or ax >= rank:
            return _fail(api, st_[7])
        if dims[ax] != nscale:
            return _fail(api, st_[5])
        for i in range(rank):
            if i < ax:
                outer *= dims[i]
            elif i > ax:
                inner *= dims[i]
        channels = nscale
    # output of the input's shape
    status = _call5(api[_GET_OUTPUT], context, 0, _address(dims_p), rank, slot0)
    if status != 0:
        return status
    y_value = slots[0]
    status = _call2(api[_GET_TENSOR_MUTABLE_DATA], s_value, slot0)
    if status != 0:
        return status
    scale_addr = slots[0]
    scale = carray(_f32p(scale_addr), nscale)
    for i in range(nscale):
        s = scale[i]
        if not (s > 0.0 and s < 3.4028235e38):
            return _fail(api, st_[6])
    status = _call2(api[_GET_TENSOR_MUTABLE_DATA], x_value, slot0)
    if status != 0:
        return status
    x_addr = slots[0]
    status = _call2(api[_GET_TENSOR_MUTABLE_DATA], y_value, slot0)
    if status != 0:
        return status
    y_addr = slots[0]
    n = 1
    for i in range(rank):
        n *= dims[i]
    if n == 0:
        return 0
    # Split the work into chunks of about _CHUNK elements for ONNX Runtime's intra-op
    # thread pool (KernelContext_ParallelFor runs them inline when it has one thread).
    if not per_axis:
        mode, units, per_chunk = 0, n, _CHUNK
    elif outer > 1:  # whole (channels, inner) slabs
        mode, units, per_chunk = 1, outer, max(1, _CHUNK // (channels * inner))
    else:  # runs of channels
        mode, units, per_chunk = 2, channels, max(1, _CHUNK // inner)
    job_p = _stack_i64(JOB_SIZE)
    job = carray(job_p, JOB_SIZE)
    job[0], job[1], job[2], job[3] = kind, fmt_id, st_[4], mode
    job[4], job[5], job[6], job[7] = x_addr, y_addr, units, per_chunk
    job[8], job[9], job[10], job[11] = scale_addr, outer, channels, inner
    nchunks = (units + per_chunk - 1) // per_chunk
    if nchunks == 1:  # call the worker directly (one compiled copy of the loops)
        _call2(st_[9], _address(job_p), 0)
        return 0
    return _call5(api[_PARALLEL_FOR], context, st_[9], nchunks, 0, _address(job_p))


_COMPILED = None
_LOCK = threading.Lock()


def compute_address() -> int:
    """Address of the compiled KernelComputeV2 (compiled once per process, on first use)."""
    return _compiled()[0].address


def chunk_address() -> int:
    """Address of the compiled ParallelFor worker the kernel state must carry (state[9])."""
    return _compiled()[1].address


def _compiled():
    global _COMPILED
    with _LOCK:
        if _COMPILED is None:
            worker = cfunc(types.void(types.uint64, types.uint64), nopython=True)(_chunk_impl)
            compute = cfunc(types.uint64(types.uint64, types.uint64), nopython=True)(_compute)
            _COMPILED = (compute, worker)
        return _COMPILED
