"""Run the float model on calibration data and reduce the tensors we need, batch by batch.

:func:`collect_stats` adds the requested tensors as graph outputs of a *copy* of the
model, runs it with onnxruntime (CPUExecutionProvider by default) on every feed of the
source and folds each fetched array into a :class:`~fp8onnx.calibration.stats.TensorStats`
before the next feed: memory holds one feed's fetched activations plus ``bins`` counters
per tensor, never the activations of every sample.

Memory versus time: with ``max_bytes_per_run`` set, the first feed is run once in
chunks of tensors to measure each tensor's bytes; the tensors are then split into groups
whose fetched bytes per run stay under the budget, and the source is read once per group.
So ``k`` groups cost ``k`` passes over the data (``k`` times the model runs) in exchange
for fetching at most about ``max_bytes_per_run`` per run. Measured on PP-OCR det (329 MB
fetched per 320x640 feed; peak RSS above the after-import baseline, fresh processes):
one pass 334 MB whether 4, 32 or 128 feeds; a budget of a quarter of a feed 198 MB, in
1.9x the time (onnxruntime's own working memory stays). Keeping every activation instead,
as a collect-then-reduce calibrator does, took 1436 MB at 4 feeds and 10951 MB at 32.
Feeds are assumed to repeat identically on each
pass (true for .npz, directories, lists and the seeded random source), which makes grouped
stats equal to single-pass stats. A one-shot source (generator, reader without
``rewind()``) cannot be read twice: it is collected in one pass, with a warning.

Tensors inside If/Loop/Scan bodies cannot be fetched: they come back with
``TensorStats.missing`` saying so. Non-float tensors (int, bool) get no stats.

>>> import numpy as np
>>> from onnx import helper, TensorProto as T
>>> g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
...     "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
...     [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3])])
>>> m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
>>> st = collect_stats(m, ["r"], [{"x": np.array([[1.0, -5.0, 2.5]], np.float32)}], progress=False)
>>> st["r"].amax, st["r"].count
(2.5, 3)
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CalibrationError
from .data import CalibrationSource, open_source
from .stats import DEFAULT_BINS, TensorStats

__all__ = ["collect_stats", "PROBE_CHUNK"]

log = logging.getLogger(__name__)

#: Tensors fetched per probe run when measuring sizes for ``max_bytes_per_run``.
PROBE_CHUNK = 64
_FLOAT_ELEMS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
_PROTO_LIMIT = 2_000_000_000  # protobuf cannot serialise 2 GB: larger models go via a file


def _subgraph_outputs(graph: onnx.GraphProto, into: dict, owner: Optional[str]) -> None:
    """Map every tensor produced inside a subgraph of ``graph`` to its top-level node."""
    for node in graph.node:
        for attr in node.attribute:
            subs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subs:
                where = owner or f"{node.op_type} node {node.name or node.output[0]!r}"
                for inner in sub.node:
                    for out in inner.output:
                        into.setdefault(out, where)
                for vi in sub.input:
                    into.setdefault(vi.name, where)
                _subgraph_outputs(sub, into, where)


def _elem_types(model: onnx.ModelProto) -> dict:
    g = model.graph
    types = {}
    for vi in chain(g.input, g.output, g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


class _Plan:
    """Which requested tensors to fetch, read from initializers, or report missing."""

    def __init__(self, model: onnx.ModelProto, names: list):
        g = model.graph
        top = {vi.name for vi in g.input} | {o for n in g.node for o in n.output}
        self.inits = {t.name: t for t in g.initializer}
        inner = {}
        _subgraph_outputs(g, inner, None)
        unknown = [n for n in names if n not in top and n not in self.inits and n not in inner]
        if unknown:
            raise ValueError(f"tensors {unknown} are not in the model: ask for tensor names "
                             "the graph produces")
        types = _elem_types(model)
        if any(n not in types for n in names if n in top):
            try:
                inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
                types = {**_elem_types(inferred), **types}
            except Exception as e:  # inference is only a help: unknown types are fetched
                log.debug("shape inference failed (%s); fetching untyped tensors as is", e)
        self.types = types
        self.missing = {n: f"inside the subgraph of {inner[n]}: onnxruntime cannot fetch it"
                        for n in names if n in inner and n not in top}
        self.fetch, self.skipped = [], []
        for n in dict.fromkeys(names):  # keep order, drop duplicates
            if n in self.missing:
                continue
            t = types.get(n)
            if t is not None and t not in _FLOAT_ELEMS:
                self.skipped.append(n)
            elif n in self.inits and n not in top:
                continue
            else:
                self.fetch.append(n)
        self.from_inits = [n for n in names if n in self.inits and n not in top
                           and n not in self.skipped]


def _session(model: onnx.ModelProto, outputs: list, types: dict, providers):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in outputs:  # only the element type: shapes may be dynamic or unknown
        m.graph.output.append(helper.make_tensor_value_info(n, types[n], None) if n in types
                              else onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    # No graph optimizations: even ORT_ENABLE_BASIC fuses Conv+BatchNorm/Add/Mul where the
    # intermediate is not fetched, so values then depend on which tensors a run fetches
    # (on PP-OCR cls, grouped stats differed from single-pass stats in 177 of 252 tensors
    # at BASIC, none with optimizations off). Calibration wants the float model's own values.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]
    if m.ByteSize() < _PROTO_LIMIT:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "calib.onnx")
            onnx.save_model(m, path, save_as_external_data=True, location="calib.data")
            sess = ort.InferenceSession(path, so, providers=providers)
    have = {o.name for o in sess.get_outputs()}
    lost = [n for n in outputs if n not in have]
    if lost:  # defensive: ORT documents that it keeps graph outputs
        raise CalibrationError(f"onnxruntime dropped tensors {lost} from the calibration run")
    return sess


def _run(sess, names, feed, index):
    try:
        return sess.run(names, feed)
    except Exception as e:
        raise CalibrationError(
            f"onnxruntime failed to run the float model on calibration feed {index} ({e}): "
            "check that the data matches what the model expects") from e


def _fold(stats, names, arrays, dropped, pool=None):
    work = []
    for n, a in zip(names, arrays):
        if n in dropped:
            continue
        if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
            log.debug("calibration: tensor %r is %s, not float: no stats", n,
                      getattr(a, "dtype", type(a).__name__))
            dropped.add(n)
            continue
        work.append((stats[n], a))
    if pool is None or len(work) < 2:
        for s, a in work:
            s.update(a)
    else:  # one tensor per task: each TensorStats is touched by one thread at a time
        for _ in pool.map(lambda sa: sa[0].update(sa[1]), work):
            pass


def _partition(names, sizes, budget):
    groups, cur, used = [], [], 0
    for n in names:
        b = sizes.get(n, 0)
        if b > budget:
            log.warning("calibration: tensor %r alone takes %d bytes per run, over "
                        "max_bytes_per_run=%d; fetching it on its own", n, b, budget)
        if cur and used + b > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(n)
        used += b
    if cur:
        groups.append(cur)
    return groups


def collect_stats(model: onnx.ModelProto, tensor_names: list, source: Iterable, *,
                  bins: int = DEFAULT_BINS, max_bytes_per_run: Optional[int] = None,
                  progress: Optional[bool] = None, providers=None) -> dict:
    """Statistics of ``tensor_names`` over every feed of ``source``, as {name: TensorStats}.

    ``source`` is a :class:`CalibrationSource` or anything :func:`open_source` accepts
    (then validated against ``model``). ``max_bytes_per_run`` bounds the bytes fetched
    per run by splitting the tensors into groups (one pass over the data each; see the
    module docstring). ``progress``: None shows a tqdm bar when stderr is a terminal.
    The model is not modified. Non-float tensors are left out of the result.
    """
    src = source if isinstance(source, CalibrationSource) else open_source(source, model)
    plan = _Plan(model, list(tensor_names))
    for n in plan.skipped:
        log.debug("calibration: tensor %r is not float: no stats", n)
    stats = {n: TensorStats.missing_stats(n, r, bins) for n, r in plan.missing.items()}
    for n, r in plan.missing.items():
        log.warning("calibration: tensor %r is %s; it gets no stats", n, r)
    for n in plan.from_inits:  # a constant needs no run: its one value is its statistics
        stats[n] = TensorStats.empty(n, bins)
        stats[n].update(numpy_helper.to_array(plan.inits[n]))
    if not plan.fetch:
        return stats
    for n in plan.fetch:
        stats[n] = TensorStats.empty(n, bins)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    # Folding is Numba/numpy work that releases the GIL, so tensors of one feed are reduced
    # in parallel. Measured on the shared 2-core machine under load ~7: 1.12x on PP-OCR
    # cls, 1.0x on det (median of 5 and 3 runs); it costs nothing when cores are busy.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        dropped = _collect(model, plan, src, stats, max_bytes_per_run, providers, show, pool)
    for n in dropped:
        del stats[n]
    return stats


def _collect(model, plan, src, stats, max_bytes_per_run, providers, show, pool) -> set:
    """Fold every feed into ``stats``, in one or several groups; the non-float names."""
    dropped: set = set()
    feeds = iter(src)
    first = next(feeds)
    probed = False
    groups = [plan.fetch]
    if max_bytes_per_run is not None:
        sizes = {}
        for i in range(0, len(plan.fetch), PROBE_CHUNK):
            chunk = plan.fetch[i:i + PROBE_CHUNK]
            arrays = _run(_session(model, chunk, plan.types, providers), chunk, first, 0)
            sizes.update({n: getattr(a, "nbytes", 0) for n, a in zip(chunk, arrays)})
            _fold(stats, chunk, arrays, dropped, pool)
            del arrays
        probed = True
        groups = _partition(plan.fetch, sizes, int(max_bytes_per_run))
        if len(groups) > 1 and not src.reiterable:
            log.warning("calibration: the %s source can be read only once, so all %d tensors "
                        "are collected in one pass despite max_bytes_per_run", src.kind,
                        len(plan.fetch))
            groups = [plan.fetch]
        log.info("calibration: %d tensors in %d group(s) under %d bytes per run",
                 len(plan.fetch), len(groups), max_bytes_per_run)
    for gi, group in enumerate(groups):
        if gi == 0:
            it = feeds if probed else chain([first], feeds)
        else:
            it = iter(src)
            next(it)  # the first feed was folded in by the probe
        sess = _session(model, group, plan.types, providers)
        bar = _bar(src, show, gi, len(groups), skip=1 if probed else 0)
        for k, feed in enumerate(it, start=1 if probed else 0):
            arrays = _run(sess, group, feed, k)
            _fold(stats, group, arrays, dropped, pool)
            del arrays  # before the next run: one feed's activations at a time
            if bar is not None:
                bar.update(src.samples_in(feed))
        if bar is not None:
            bar.close()
    return dropped


def _bar(src, show, gi, ngroups, skip):
    if not show:
        return None
    from tqdm import tqdm

    total = None if src.num_samples is None else src.num_samples
    desc = "calibration" if ngroups == 1 else f"calibration pass {gi + 1}/{ngroups}"
    bar = tqdm(total=total, unit="sample", desc=desc, file=sys.stderr, dynamic_ncols=True)
    if skip and total is not None:
        bar.update(min(skip * src.batch_size if src.rows else skip, total))
    return bar
