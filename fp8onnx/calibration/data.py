"""Calibration data: one iterable of validated feed dicts, whatever the user passes.

:func:`open_source` accepts

* a ``.npz`` file: keys are the model's input names, the leading axis enumerates samples,
  fed ``batch_size`` rows at a time (the file's arrays are read once per pass);
* a directory: one ``.npz`` feed per file, sorted by file name, each file's arrays fed
  as they are (shapes may differ between files: OCR crops, sentences of any length);
* ``"random"``: N(0, 1) floats, ints in {0, 1}, random bools, shaped from the
  model's inputs (dynamic leading dim -> ``batch_size``, other dynamic dims -> 32); logs
  a WARNING, since scales from random data do not fit real inputs;
* any iterable of feed dicts (a list can be iterated again, a generator once);
* an onnxruntime ``CalibrationDataReader`` (anything with ``get_next()``), used as is.
  A reader is read once; a second pass (grouped collection, see
  :func:`~fp8onnx.calibration.collect.collect_stats`) calls its ``rewind()`` if it has
  one, otherwise raises :class:`~fp8onnx.errors.CalibrationError`. Nothing is cached.

``samples`` counts rows of a ``.npz`` (and of random data) and feeds everywhere else.
Every feed is checked against the model's inputs (names, dtype, fixed dims, NaN/Inf)
and converted where that is lossless in intent (float64 -> float32, int -> float).

>>> import numpy as np, onnx
>>> from onnx import helper, TensorProto
>>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
>>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
>>> m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
>>> src = open_source([{"x": np.ones((2, 4))}], m)
>>> [f["x"].dtype for f in src], len(src)
([dtype('float32')], 1)
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import numpy as np
import onnx

from ..errors import CalibrationError
from .validate import FeedValidator

__all__ = ["open_source", "CalibrationSource", "DEFAULT_RANDOM_SAMPLES", "DEFAULT_DYNAMIC_DIM"]

log = logging.getLogger(__name__)

#: Samples drawn by the ``"random"`` source when ``samples`` is not given.
DEFAULT_RANDOM_SAMPLES = 8
#: Size given to a dynamic dimension other than the leading one by the ``"random"`` source.
DEFAULT_DYNAMIC_DIM = 32

class CalibrationSource:
    """Validated feeds for one model; iterate it (again, where the source allows).

    ``num_samples`` is the number of samples it will yield when known, else None;
    ``len()`` is the number of feeds when known (TypeError otherwise);
    ``samples_in(feed)`` is how many samples one feed holds (its rows for ``.npz`` and
    random data, 1 otherwise), for progress bars.
    """

    kind = "iterable"
    rows = False  # whether the leading axis of a feed enumerates samples
    reiterable = True

    def __init__(self, model: onnx.ModelProto, samples: Optional[int], batch_size: int):
        if samples is not None and int(samples) < 1:
            raise CalibrationError(f"samples must be >= 1 (got {samples}): pass a positive count")
        if int(batch_size) < 1:
            raise CalibrationError(f"batch_size must be >= 1 (got {batch_size})")
        self._validator = FeedValidator(model)
        self.samples = None if samples is None else int(samples)
        self.batch_size = int(batch_size)
        self.num_samples: Optional[int] = None
        self._passes = 0

    def _raw(self) -> Iterator[tuple]:
        """Yield (feed, where, first_sample_index, n_samples) unvalidated."""
        raise NotImplementedError

    def __iter__(self):
        if self._passes and not self.reiterable:
            raise CalibrationError(
                f"this calibration source ({self.kind}) can be read only once but a second "
                "pass was requested (grouped collection does one pass per group): pass a "
                "list, a .npz file or a directory, give the reader a rewind() method, or "
                "raise max_bytes_per_run so that one pass suffices"
            )
        self._passes += 1
        return self._validated()

    def _validated(self):
        seen = 0
        for feed, where, first, n in self._raw():
            if self.samples is not None and seen >= self.samples:
                break
            yield self._validator.check(feed, where, first, self.rows)
            seen += n
        if seen == 0:
            raise CalibrationError(
                f"the calibration source ({self.kind}) yielded no samples: pass at least one feed"
            )
        if self.samples is not None and seen < self.samples and self.num_samples is None:
            log.warning("calibration: asked for %d samples but the %s source gave only %d; "
                        "using %d", self.samples, self.kind, seen, seen)

    def samples_in(self, feed: Mapping) -> int:
        if not self.rows:
            return 1
        first = next(iter(feed.values()), None)
        return int(first.shape[0]) if getattr(first, "ndim", 0) else 1

    def _feeds(self) -> Optional[int]:
        if self.num_samples is None:
            return None
        return -(-self.num_samples // self.batch_size) if self.rows else self.num_samples

    def __len__(self) -> int:
        n = self._feeds()
        if n is None:
            raise TypeError(f"the length of a {self.kind} calibration source is not known")
        return n

    def _cap(self, available: int) -> int:
        """Samples to use out of ``available``, warning when fewer than asked."""
        if self.samples is None:
            return available
        if available < self.samples:
            log.warning("calibration: asked for %d samples but the %s source holds only %d; "
                        "using %d", self.samples, self.kind, available, available)
            return available
        return self.samples

    def __repr__(self) -> str:
        n = "?" if self.num_samples is None else self.num_samples
        return f"CalibrationSource({self.kind}, samples={n})"


class _NpzSource(CalibrationSource):
    kind = ".npz file"
    rows = True

    def __init__(self, path, model, samples, batch_size):
        super().__init__(model, samples, batch_size)
        self.path = os.fspath(path)
        with _open_npz(self.path) as z:
            names = list(z.files)
            self._validator.check_names(names, f"file {self.path}")
            lengths = {}
            for k in names:
                shape = _npz_shape(z, k)
                if not shape:
                    raise CalibrationError(
                        f"array {k!r} in {self.path} is a scalar: the leading axis must "
                        "enumerate samples (save one row per sample)")
                lengths[k] = shape[0]
        if len(set(lengths.values())) > 1:
            raise CalibrationError(
                f"arrays in {self.path} have different sample counts {lengths}: the leading "
                "axis must enumerate the same samples in every array")
        total = next(iter(lengths.values()), 0)
        if total == 0:
            raise CalibrationError(f"{self.path} holds zero samples: add calibration samples")
        self.num_samples = self._cap(total)

    def _raw(self):
        with _open_npz(self.path) as z:
            arrays = {k: z[k] for k in z.files}
        n, bs = self.num_samples, self.batch_size
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            yield ({k: a[start:stop] for k, a in arrays.items()},
                   f"samples {start}..{stop - 1} of {self.path}", start, stop - start)


class _DirSource(CalibrationSource):
    kind = "directory"

    def __init__(self, path, model, samples, batch_size):
        super().__init__(model, samples, batch_size)
        self.path = os.fspath(path)
        names = sorted(f for f in os.listdir(self.path) if f.endswith(".npz"))
        if not names:
            raise CalibrationError(
                f"directory {self.path} holds no .npz files: save one feed per file with "
                "np.savez(path, **{input_name: array})")
        self.num_samples = self._cap(len(names))
        self.files = [os.path.join(self.path, f) for f in names[: self.num_samples]]

    def _raw(self):
        for i, f in enumerate(self.files):
            with _open_npz(f) as z:
                feed = {k: z[k] for k in z.files}
            yield feed, f"file {f}", i, 1


class _RandomSource(CalibrationSource):
    kind = "random"
    rows = True

    def __init__(self, model, samples, batch_size, seed=0):
        super().__init__(model, samples, batch_size)
        self.num_samples = self.samples or DEFAULT_RANDOM_SAMPLES
        self.seed = seed
        self.shapes = {}
        for name in self._validator.required:
            spec = self._validator.inputs[name]
            if spec.shape is None or spec.dtype is None:
                raise CalibrationError(
                    f"model input {name!r} has no {'shape' if spec.dtype else 'element type'} "
                    "in the graph, so random data cannot be made for it: pass real data")
            self.shapes[name] = tuple(
                d if isinstance(d, int) else (batch_size if axis == 0 else DEFAULT_DYNAMIC_DIM)
                for axis, d in enumerate(spec.shape))
        log.warning(
            "calibration: using RANDOM data for inputs %s: scales will not fit real inputs "
            "and accuracy needs real data; pass a .npz file or a directory of .npz feeds",
            {n: s for n, s in self.shapes.items()})

    def _per_feed(self) -> int:
        first = next(iter(self.shapes.values()), ())
        return int(first[0]) if first else 1

    def _feeds(self) -> int:
        return -(-self.num_samples // self._per_feed())

    def _raw(self):
        rng = np.random.default_rng(self.seed)  # same data on every pass
        specs = self._validator.inputs
        # Inputs whose leading dim is dynamic: the last feed is cut to the samples left.
        batched = {n for n, s in self.shapes.items() if s and not isinstance(specs[n].shape[0], int)}
        per_feed = self._per_feed()
        done = 0
        while done < self.num_samples:
            n_rows = per_feed
            if batched and len(batched) == len(self.shapes):
                n_rows = min(per_feed, self.num_samples - done)
            feed = {}
            for name, shape in self.shapes.items():
                if name in batched:
                    shape = (n_rows,) + shape[1:]
                dt = specs[name].dtype
                if dt.kind == "b":
                    feed[name] = rng.random(shape) < 0.5
                elif dt.kind in "iu":
                    # 0 and 1 are valid token ids, token type ids and masks alike
                    feed[name] = rng.integers(0, 2, size=shape).astype(dt)
                else:
                    feed[name] = rng.standard_normal(shape).astype(dt)
            yield feed, f"random feed at sample {done}", done, n_rows
            done += n_rows


class _IterableSource(CalibrationSource):
    kind = "iterable"

    def __init__(self, items, model, samples, batch_size):
        super().__init__(model, samples, batch_size)
        self.items = items
        # Iterators (generators included) are spent after one pass; other iterables are not.
        self.reiterable = not isinstance(items, Iterator)
        if isinstance(items, (list, tuple)):
            self.num_samples = self._cap(len(items))
            if not items:
                raise CalibrationError("the calibration list is empty: pass at least one feed")

    def _raw(self):
        for i, feed in enumerate(self.items):
            yield feed, f"feed {i}", i, 1


class _ReaderSource(CalibrationSource):
    kind = "CalibrationDataReader"

    def __init__(self, reader, model, samples, batch_size):
        super().__init__(model, samples, batch_size)
        self.reader = reader
        self.reiterable = callable(getattr(reader, "rewind", None))

    def _raw(self):
        if self._passes > 1:
            self.reader.rewind()
        i = 0
        while True:
            feed = self.reader.get_next()
            if feed is None:
                return
            yield feed, f"feed {i} of the reader", i, 1
            i += 1


def _open_npz(path):
    if not os.path.exists(path):
        raise CalibrationError(f"calibration file {path} not found: check the path")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(
            f"calibration file {path} is not a readable .npz ({e}): save it with "
            "np.savez(path, **{input_name: array})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CalibrationError(
            f"calibration file {path} is a single .npy array, not an .npz: save it with "
            "np.savez(path, **{input_name: array}) so arrays are named after model inputs")
    return z


def _npz_shape(z, key) -> tuple:
    """Shape of one member of an npz without reading its data."""
    fmt = np.lib.format
    try:
        with z.zip.open(key + ".npy") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            return tuple(read(f)[0])
    except Exception:  # unusual header versions: read the array itself
        return tuple(z[key].shape)


def open_source(spec, model: onnx.ModelProto, *, samples: Optional[int] = None,
                batch_size: int = 1) -> CalibrationSource:
    """Wrap calibration data ``spec`` for ``model`` (see the module docstring for forms)."""
    if isinstance(spec, CalibrationSource):
        if samples is None:
            return spec
        return _IterableSource(spec, model, samples, batch_size)
    if isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, str) and spec == "random":
            return _RandomSource(model, samples, batch_size)
        path = os.fspath(spec)
        if os.path.isdir(path):
            return _DirSource(path, model, samples, batch_size)
        if not os.path.exists(path):
            raise CalibrationError(
                f"calibration data {path} not found: pass a .npz file, a directory of .npz "
                "files, or 'random'")
        return _NpzSource(path, model, samples, batch_size)
    if callable(getattr(spec, "get_next", None)):
        return _ReaderSource(spec, model, samples, batch_size)
    if isinstance(spec, Mapping):
        return _IterableSource([spec], model, samples, batch_size)
    if isinstance(spec, Iterable):
        return _IterableSource(spec, model, samples, batch_size)
    raise CalibrationError(
        f"cannot use a {type(spec).__name__} as calibration data: pass a .npz path, a "
        "directory, 'random', a list of feed dicts or a CalibrationDataReader")
