"""Loading and saving ONNX model files, with one-line errors that say what to fix.

``load_model`` accepts a path, the bytes of a model, or a ``ModelProto`` (returned as-is:
the caller copies). It refuses, with a :class:`ModelFileError`, a missing path, a
directory, a file that is not an ONNX model or is truncated, a model without graph
inputs, a missing external-data file, and an external-data ``location`` pointing outside
the model's folder (that file is never opened). The user's file is only read.

``save_model`` writes atomically: the model (and its external data) goes to temporary
files in the destination folder that are renamed into place only once complete, so a
failure leaves no partial output. Saving the same model twice gives identical bytes.

>>> model = load_model("resnet50.onnx")                        # doctest: +SKIP
>>> save_model(model, "out/resnet50_fp8.onnx", input_path="resnet50.onnx")  # doctest: +SKIP

External data (``external_data=True``, or automatically above ~1.8 GB of tensors) goes
to one file ``<output name>.data`` beside the model. Memory: the caller's model is not
modified; initializer data goes from it to the file one tensor at a time and the model
file is serialised from a skeleton without weights, so saving needs about one tensor of
extra memory. Measured with ``python tools/bench_modelio.py 1024 3`` (1 GiB model, eight
128 MiB initializers, medians of 3 runs, each in a fresh process): peak RSS +134 MB
(one tensor) and 5.6 s here, against +128 MB and 6.2 s for
``onnx.save_model(save_as_external_data=True)``, which strips the weights out of the
caller's model. Clearing and restoring ``raw_data`` in place instead took +2054 MB:
protobuf's arena keeps cleared bytes.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Iterator, Optional, Tuple, Union

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper

from . import graph as G
from .errors import UserError

__all__ = ["ModelFileError", "load_model", "save_model", "check_output_path", "tensor_bytes", "INLINE_LIMIT"]

log = logging.getLogger("fp8onnx.modelio")

#: Above this many bytes of tensor data, ``save_model(external_data=None)`` writes
#: external data: protobuf refuses to serialise a message of 2 GiB or more, and the
#: graph structure itself needs some room.
INLINE_LIMIT = 1_800_000_000
#: Tensors at least this large go to the external-data file (onnx's own default).
EXTERNAL_MIN_BYTES = 1024
_ALIGN = 64  # byte alignment of each tensor in the external-data file

PathLike = Union[str, os.PathLike]


class ModelFileError(UserError):
    """A model file that cannot be read or written as asked."""


# ---------------------------------------------------------------------------- loading

def load_model(source, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Reads an ONNX model from a path or bytes; a ``ModelProto`` is returned unchanged.

    Raises :class:`ModelFileError` (a :class:`~fp8onnx.errors.UserError`) naming the
    problem and the fix. With ``load_external_data=False`` external tensors stay
    references (their locations are still checked to lie inside the model's folder).
    """
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        model = _parse(bytes(source), "the given bytes")
        _check_has_inputs(model, "the given bytes")
        if any(_is_external(t) for t in _all_tensors(model)):
            raise ModelFileError(
                "the given model bytes reference external data files, which cannot be found "
                "without a folder; pass the model's file path instead"
            )
        return model
    try:
        path = os.fspath(source)
    except TypeError as e:
        raise ModelFileError(
            f"cannot load a model from a {type(source).__name__}; pass a file path, bytes or an onnx.ModelProto"
        ) from e
    if not os.path.exists(path):
        raise ModelFileError(f"model file {path!r} not found; check the path")
    if os.path.isdir(path):
        raise ModelFileError(f"model path {path!r} is a directory; pass the .onnx file inside it")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path!r} ({e.strerror}); check its permissions") from e
    model = _parse(data, f"file {path!r}")
    del data
    _check_has_inputs(model, f"file {path!r}")
    base_dir = os.path.dirname(os.path.abspath(path))
    _check_external_locations(model, base_dir, path, check_files=load_external_data)
    if load_external_data and any(_is_external(t) for t in _all_tensors(model)):
        try:
            external_data_helper.load_external_data_for_model(model, base_dir)
        except (OSError, ValueError) as e:
            raise ModelFileError(
                f"cannot read the external data of {path!r} ({e}); keep the .data file(s) beside the .onnx file"
            ) from e
    return model


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    """Parses model bytes; rejects what is not a complete ONNX model."""
    hint = f"{what} is truncated or not an ONNX model; re-export or re-download it"
    if not data:
        raise ModelFileError(f"{what} is empty; re-export or re-download the model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelFileError(hint) from e
    # Random or cut bytes can parse by chance: a real model has an IR version, a graph
    # with nodes or outputs, and an opset import (written after the graph, so a file cut
    # at a field boundary inside the model loses it).
    if (
        model.ir_version <= 0
        or not model.HasField("graph")
        or not model.opset_import
        or not (len(model.graph.node) or len(model.graph.output))
    ):
        raise ModelFileError(hint)
    return model


def _check_has_inputs(model: onnx.ModelProto, what: str) -> None:
    inits = {t.name for t in model.graph.initializer}
    if not [v for v in model.graph.input if v.name not in inits]:
        raise ModelFileError(
            f"model in {what} has no graph inputs (every input is an initializer or there are none), "
            "so there is nothing to calibrate or run; export it with its real inputs"
        )


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    # Initializers and Constant/attribute tensors of every graph, subgraphs included.
    return external_data_helper._get_all_tensors(model)


def _is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _external_info(t: onnx.TensorProto) -> Tuple[str, int, Optional[int]]:
    info = {e.key: e.value for e in t.external_data}
    offset = int(info.get("offset", 0) or 0)
    length = info.get("length")
    return info.get("location", ""), offset, (int(length) if length not in (None, "") else None)


def _check_external_locations(model, base_dir: str, path: str, *, check_files: bool) -> None:
    """Refuses external data outside ``base_dir``; with ``check_files`` also missing/short files."""
    real_base = os.path.realpath(base_dir)
    for t in _all_tensors(model):
        if not _is_external(t):
            continue
        location, offset, length = _external_info(t)
        if not location:
            raise ModelFileError(
                f"tensor {t.name!r} in {path!r} is marked as external data without a location; re-export the model"
            )
        target = os.path.realpath(os.path.join(real_base, location))
        if os.path.isabs(location) or os.path.commonpath([real_base, target]) != real_base:
            raise ModelFileError(
                f"tensor {t.name!r} in {path!r} points to external data {location!r} outside the model's "
                f"folder {base_dir!r}; refusing to read it. Move the data file beside the model and save "
                "the model again with a relative location"
            )
        if not check_files:
            continue
        if not os.path.isfile(target):
            raise ModelFileError(
                f"external data file {location!r} of tensor {t.name!r} not found in folder {base_dir!r}; "
                f"copy it there beside {os.path.basename(path)!r}"
            )
        if length is not None and os.path.getsize(target) < offset + length:
            raise ModelFileError(
                f"external data file {location!r} in {base_dir!r} is shorter than tensor {t.name!r} needs "
                f"(offset {offset} + length {length}); it is truncated, copy it again"
            )


# ----------------------------------------------------------------------------- saving

def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held in the model, from dims and types (no data is read).

    Works above 2 GB, unlike ``ByteSize``; typed-field tensors count at their element
    size, strings at one byte an element.
    """
    return sum(G.tensor_nbytes(t) for t in _all_tensors(model) if not _is_external(t))


def save_model(
    model: onnx.ModelProto,
    path: PathLike,
    *,
    external_data: Optional[bool] = None,
    input_path: Optional[PathLike] = None,
) -> None:
    """Writes ``model`` to ``path`` atomically and deterministically.

    ``external_data``: None chooses external data above :data:`INLINE_LIMIT` bytes of
    tensors, True forces it (one file ``<basename>.data`` beside the model, tensors of at
    least 1 KiB), False forces one self-contained file. ``input_path`` is the model that
    was read: writing over it is refused.
    """
    path = os.fspath(path)
    folder = check_output_path(path, input_path=input_path)
    for t in _all_tensors(model):
        if _is_external(t):
            raise ModelFileError(
                f"tensor {t.name!r} still refers to external data that was not loaded; "
                "load the model with load_model(path, load_external_data=True) before saving"
            )
    if external_data is None:
        external_data = tensor_bytes(model) > INLINE_LIMIT
    if external_data:
        _save_external(model, path, folder)
    else:
        try:
            data = model.SerializeToString(deterministic=True)
        except (ValueError, EncodeError) as e:  # protobuf: message too large
            raise ModelFileError(
                f"model is too large to save as one file ({e}); save it with external_data=True"
            ) from e
        _atomic_write(folder, path, [data])
    log.info("saved model to %s%s", path, " (+ external data)" if external_data else "")


def check_output_path(path: PathLike, *, input_path: Optional[PathLike] = None) -> str:
    """Refuses an output path that cannot be written or is the input; returns its folder.

    Callers check before long work, so a doomed compile fails in a second, not after it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ModelFileError(f"output folder {folder!r} does not exist; create it first or choose another output path")
    if os.path.isdir(path):
        raise ModelFileError(f"output path {path!r} is a directory; give a file name such as model_fp8.onnx")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ModelFileError(f"output folder {folder!r} is not writable; choose another output path")
    if input_path is not None and _same_file(path, os.fspath(input_path)):
        raise ModelFileError(
            f"output path {path!r} is the input model; choose a different output path (the input is never overwritten)"
        )
    data = path + ".data"
    if input_path is not None and os.path.exists(data) and _is_input_data_file(data, os.fspath(input_path)):
        raise ModelFileError(
            f"output path {path!r} would overwrite {os.path.basename(data)!r}, the input model's external data; "
            "choose a different output name"
        )
    return folder


def _is_input_data_file(candidate: str, input_path: str) -> bool:
    """True when ``candidate`` is one of the external-data files of the model at ``input_path``."""
    try:
        model = onnx.load(input_path, load_external_data=False)
    except Exception:  # not readable as a model: it has no data files to protect
        return False
    base = os.path.dirname(os.path.abspath(input_path))
    for t in _all_tensors(model):
        if _is_external(t):
            location = _external_info(t)[0]
            if location and _same_file(os.path.join(base, location), candidate):
                return True
    return False


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _tmp_name(folder: str, final: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(final)}.", suffix=".tmp")
    # mkstemp makes the file private (0600); the renamed output should get the mode any
    # new file of the user's gets (0666 less the umask), as onnx.save would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    os.close(fd)
    return tmp


def _write_chunks(tmp: str, chunks) -> None:
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(folder: str, final: str, chunks) -> None:
    tmp = _tmp_name(folder, final)
    try:
        _write_chunks(tmp, chunks)
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(p: str) -> None:
    try:
        os.remove(p)
    except OSError:
        pass


def _save_external(model: onnx.ModelProto, path: str, folder: str) -> None:
    """Tensor data to ``<path>.data``, the rest to ``path``; both renamed into place at the end.

    The caller's model is never modified: a skeleton of it is built in which every
    initializer is a new TensorProto without its data, and the data goes straight from
    the model to the file one tensor at a time. (Clearing and later restoring ``raw_data``
    in place would cost a second copy of all weights: protobuf's arena does not reuse the
    cleared memory.) Large tensors outside the initializers (Constant attributes,
    subgraph initializers) are copied into the skeleton, then moved to the file.
    """
    location = os.path.basename(path) + ".data"
    data_final = os.path.join(folder, location)
    data_tmp = _tmp_name(folder, data_final)
    model_tmp = None
    try:
        with open(data_tmp, "wb") as f:
            skeleton = _skeleton(model, f, location)
            for t in _all_tensors(skeleton):
                if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES:
                    _append_external(f, t, t.raw_data, location)
                    t.ClearField("raw_data")
            f.flush()
            os.fsync(f.fileno())
        data = skeleton.SerializeToString(deterministic=True)
        del skeleton
        model_tmp = _tmp_name(folder, path)
        _write_chunks(model_tmp, [data])
        del data
        # Data first: once the model file appears, the data it names is complete.
        os.replace(data_tmp, data_final)
        os.replace(model_tmp, path)
    except BaseException:
        _remove_quietly(data_tmp)
        if model_tmp:
            _remove_quietly(model_tmp)
        raise


def _skeleton(model: onnx.ModelProto, f, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose main-graph initializers point into ``f`` (written here)."""
    skeleton = onnx.ModelProto()
    G.copy_fields(skeleton, model, skip=("graph",))
    G.copy_fields(skeleton.graph, model.graph, skip=("initializer",))
    for t in model.graph.initializer:
        stub = skeleton.graph.initializer.add()
        G.copy_fields(stub, t, skip=("raw_data",))  # raw_data is not even read here
        if t.HasField("raw_data"):
            raw = t.raw_data  # one tensor's bytes at a time
            if len(raw) >= EXTERNAL_MIN_BYTES:
                _append_external(f, stub, raw, location)
            else:
                stub.raw_data = raw
            del raw
    return skeleton


def _append_external(f, t: onnx.TensorProto, raw: bytes, location: str) -> None:
    pad = (-f.tell()) % _ALIGN
    if pad:
        f.write(b"\0" * pad)
    offset = f.tell()
    f.write(raw)
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        t.external_data.add(key=key, value=value)
    t.data_location = onnx.TensorProto.EXTERNAL
