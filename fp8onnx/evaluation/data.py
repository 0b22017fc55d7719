"""Sessions, model checks and evaluation data (feeds plus the targets a metric needs).

:func:`session_for` is the one place that decides what runs a model: fp8onnx's runtime
when the model holds ``ai.fp8onnx`` ops, else onnxruntime with its FP8-unsafe CPU
rewrites disabled (``ReluQuantRewrite`` drops a Relu in front of a QuantizeLinear,
right only for unsigned types; ``WeightBiasQuantization`` makes int32 biases that
overflow for E5M2; ``ClipQuantRewrite`` fails on FP8 zero points; onnxruntime 1.32).
A model with native FP8 QuantizeLinear/DequantizeLinear runs as a rewritten copy on the
fused ``ai.fp8onnx`` kernels (:class:`fp8onnx.passes.EmulateQDQ`, bit-identical to
onnxruntime's own Q/DQ and about 2x faster); ``ort_qdq=True`` or the environment
variable ``FP8ONNX_ORT_QDQ=1`` keeps onnxruntime's own kernels (:func:`emulated_qdq_session`).

Evaluation data takes every form calibration data does (see
:func:`fp8onnx.calibration.open_source`); in addition, arrays whose names are not model
inputs (a ``label`` array in the ``.npz``, extra keys in feed dicts) are split off as
*targets* and handed to the metric with the outputs of the same samples.

>>> import numpy as np
>>> feeds, targets = split_targets({"input": np.zeros(2), "label": np.ones(2)}, {"input"})
>>> sorted(feeds), sorted(targets)
(['input'], ['label'])
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional, Tuple

import numpy as np
import onnx

from .. import formats as _formats
from ..calibration import open_source
from ..errors import CalibrationError, UserError

__all__ = ["session_for", "emulated_qdq_session", "ORT_QDQ_ENV", "ORT_FP8_UNSAFE", "has_custom_ops",
           "check_formats", "check_same_inputs", "split_targets", "eval_batches", "model_inputs"]

log = logging.getLogger(__name__)

from ..runtime.session import FP8_UNSAFE_OPTIMIZERS as ORT_FP8_UNSAFE  # noqa: E402  the one list
_DOMAIN = "ai.fp8onnx"
#: Set to 1 to evaluate native FP8 Q/DQ models on onnxruntime's own Q/DQ kernels.
ORT_QDQ_ENV = "FP8ONNX_ORT_QDQ"


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def has_custom_ops(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds ``ai.fp8onnx`` nodes (in any subgraph)."""
    return any(n.domain == _DOMAIN for n in _nodes(model.graph))


def _ort_qdq(ort_qdq: Optional[bool]) -> bool:
    if ort_qdq is not None:
        return bool(ort_qdq)
    return os.environ.get(ORT_QDQ_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def emulated_qdq_session(model, *, ort_qdq: Optional[bool] = None):
    """An :class:`fp8onnx.runtime.InferenceSession` running ``model`` (ModelProto or
    bytes) with its native FP8 Q/DQ rewritten to the fused ``ai.fp8onnx`` ops, or None
    when there is nothing to rewrite or ``ort_qdq`` (default: ``$FP8ONNX_ORT_QDQ``) asks
    for onnxruntime's own kernels.

    Outputs are bit-identical to onnxruntime running ``model`` without the rewrites in
    :data:`ORT_FP8_UNSAFE`: the ``ai.fp8onnx`` ops ``model`` already holds are folded
    first, as :class:`~fp8onnx.runtime.InferenceSession` folds them, and the rewritten
    weights are left unfolded (``fold_constants=False``): onnxruntime does not fold a
    DequantizeLinear either, and a folded weight lets it fuse and re-lay Conv weights,
    which changes the sums' bits. The rewrite works on a copy; ``model`` is not modified.
    """
    if _ort_qdq(ort_qdq):
        return None
    if isinstance(model, (bytes, bytearray)):
        # Cheap test before parsing: a model without Quantize/DequantizeLinear (both end in
        # "uantizeLinear") has nothing to rewrite.
        if b"uantizeLinear" not in model:
            return None
        copy = onnx.load_from_string(bytes(model))
    elif isinstance(model, onnx.ModelProto):
        copy = None
    else:
        return None
    from ..passes.emulate_qdq import EmulateQDQ, has_native_fp8_qdq

    if not has_native_fp8_qdq(copy if copy is not None else model):
        return None
    if copy is None:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    from ..runtime import InferenceSession, fold_constant_ops

    copy, _ = fold_constant_ops(copy)
    if not EmulateQDQ()(copy).modified:
        return None
    log.debug("evaluating the native FP8 Q/DQ on fp8onnx's fused kernels (%s=1 turns it off)", ORT_QDQ_ENV)
    # The proto itself: the session serializes it once and reads it without parsing bytes back.
    return InferenceSession(copy, fold_constants=False)


def session_for(model, *, ort_qdq: Optional[bool] = None):
    """A session that runs ``model`` (ModelProto, bytes or path): ``.run(names, feeds) -> list``.

    Models with ``ai.fp8onnx`` ops run on :class:`fp8onnx.runtime.InferenceSession`;
    others on onnxruntime's CPU provider minus the rewrites in :data:`ORT_FP8_UNSAFE`.
    Native FP8 QuantizeLinear/DequantizeLinear run on the fused ``ai.fp8onnx`` kernels
    of a rewritten copy (:func:`emulated_qdq_session`), bit-identical and faster; pass
    ``ort_qdq=True`` (or set ``FP8ONNX_ORT_QDQ=1``; ``python -m fp8onnx.evaluate
    --ort-qdq``) to run onnxruntime's own Q/DQ kernels, e.g. to time the deployed model.
    ``fp8onnx.evaluate`` and every ``fp8onnx.tune`` trial use this function.
    """
    if not isinstance(model, onnx.ModelProto):
        from ..modelio import load_model

        model = load_model(model)  # bytes or a path (zoo session factories get bytes)
    emulated = emulated_qdq_session(model, ort_qdq=ort_qdq)
    if emulated is not None:
        return emulated
    data = model.SerializeToString()
    import onnxruntime as ort

    if has_custom_ops(model):
        from ..runtime import InferenceSession

        # The runtime disables the same FP8-unsafe rewrites itself, mixed models included.
        return InferenceSession(data)

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(ORT_FP8_UNSAFE))


def check_formats(model: onnx.ModelProto, tensors: dict) -> None:
    """UserError when an ``ai.fp8onnx`` node or the tensor map names an unknown format."""
    known = set(_formats.names())
    for node in _nodes(model.graph):
        if node.domain != _DOMAIN:
            continue
        fmt = next((a.s.decode("utf-8", "replace") for a in node.attribute if a.name == "format"), None)
        if fmt not in known:
            raise UserError(
                f"node {node.name!r} ({node.op_type}) of the FP8 model names format {fmt!r}, which this "
                f"fp8onnx does not know ({', '.join(sorted(known))}): recompile the model with this version")
    for name, info in tensors.items():
        if info.get("format") not in known:
            raise UserError(
                f"the FP8 model's fp8onnx.tensors entry {name!r} names format {info.get('format')!r}, "
                "which this fp8onnx does not know: recompile the model with this version")


def model_inputs(model: onnx.ModelProto) -> dict:
    """{name: (elem_type, dims)} of the graph inputs that need data (initializers excluded)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
            if tt.HasField("shape") else None
        out[vi.name] = (tt.elem_type, dims)
    return out


def check_same_inputs(float_model: onnx.ModelProto, fp8_model: onnx.ModelProto) -> None:
    """UserError unless both models take the same inputs (names, element types, fixed dims)."""
    a, b = model_inputs(float_model), model_inputs(fp8_model)
    if set(a) != set(b):
        raise UserError(
            f"the models take different inputs (float: {sorted(a)}, FP8: {sorted(b)}): pass the FP8 "
            "model compiled from this float model")
    for name, (ta, da) in a.items():
        tb, db = b[name]
        fixed_clash = da is not None and db is not None and (
            len(da) != len(db) or any(x and y and x != y for x, y in zip(da, db)))
        if ta != tb or fixed_clash:
            raise UserError(
                f"input {name!r} differs between the models (float: type {ta} shape {da}, FP8: type "
                f"{tb} shape {db}): pass the FP8 model compiled from this float model")


def split_targets(feed: Mapping, input_names) -> Tuple[dict, dict]:
    """(model inputs, everything else) of one feed dict."""
    feeds = {k: v for k, v in feed.items() if k in input_names}
    targets = {k: np.asarray(v) for k, v in feed.items() if k not in input_names}
    return feeds, targets


def _npz_batches(path: str, inputs, batch_size: int, samples: Optional[int]):
    """(feeds, targets) lists of an .npz whose extra arrays are targets, batch_size rows each."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    lengths = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        raise CalibrationError(
            f"arrays in {path} have different sample counts {lengths}: the leading axis must enumerate "
            "the same samples in every array (inputs and targets alike)")
    n = next(iter(lengths.values()))
    if samples is not None:
        n = min(n, samples)
    feeds, targets = [], []
    for start in range(0, n, batch_size):
        f, t = split_targets({k: a[start:start + batch_size] for k, a in arrays.items()}, inputs)
        feeds.append(f)
        targets.append(t)
    return feeds, targets


def _load_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, AttributeError) as e:
        raise CalibrationError(f"{path} is not a readable .npz ({e}): save feeds with np.savez") from e


def eval_batches(data, model: onnx.ModelProto, *, samples: Optional[int] = None,
                 batch_size: int = 1) -> Iterator[Tuple[dict, dict]]:
    """Validated ``(feeds, targets)`` pairs of ``data`` for ``model``.

    ``data`` is anything :func:`~fp8onnx.calibration.open_source` accepts; names that
    are not inputs of ``model`` become targets instead of an error (except for
    ``"random"`` data, which has none).
    """
    inputs = set(model_inputs(model))
    if isinstance(data, (str, os.PathLike)) and not (isinstance(data, str) and data == "random"):
        path = os.fspath(data)
        if os.path.isfile(path) and path.endswith(".npz"):
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys = set(z.files)
            except Exception:  # unreadable: open_source gives the one-line error
                keys = inputs
            if keys - inputs and keys & inputs:
                feeds, targets = _npz_batches(path, inputs, batch_size, samples)
                yield from zip(open_source(feeds, model), targets)
                return
        elif os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
            if files:  # read one file at a time: a directory may hold more than fits in memory
                data = (_load_npz(os.path.join(path, f)) for f in files)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, os.PathLike, Mapping)) \
            and not callable(getattr(data, "get_next", None)):
        pending: deque = deque()

        def inputs_only():
            for feed in data:
                if not isinstance(feed, Mapping):
                    yield feed  # the validator names the problem
                    continue
                f, t = split_targets(feed, inputs)
                pending.append(t)
                yield f

        for feed in open_source(inputs_only(), model, samples=samples, batch_size=batch_size):
            yield feed, pending.popleft()
        return
    for feed in open_source(data, model, samples=samples, batch_size=batch_size):
        yield feed, {}
