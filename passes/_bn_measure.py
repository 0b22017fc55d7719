"""Measuring for BatchNormCalibration: the layers' channel moments in the float model and
under FP8 weights, with onnxruntime on the calibration data.

- :class:`StagedMeasure` (``sequential=True``): one run over the graph, stage by stage
  (:mod:`fp8onnx.calibration.stages`), the float model and the FP8-weight model side by
  side. A stage computes one layer from what earlier stages stored, for every feed; then
  the layer is corrected before any later stage reads it. Every node runs once per
  pipeline and feed, where running the graph prefix each layer needs cost about L/2 full
  passes (PP-OCRv4 det, 64 layers, 8 pages of 736x1472: 321 s, 65 passes).
  A folded correction is per-channel affine in the layer's output,
  ``conv(x, fq(a W)) + b' = a (conv(x, fq(W)) + b0) + (b' - a b0)`` (per-channel max
  scaling gives ``fq(a W) = a fq(W)``), so a later stage reads the stored output through
  a per-channel Mul and Add instead of recomputing it; corrected BN statistics are baked
  into the sessions of the stages that hold the BN.
- :class:`FullRunner` (``sequential=False``): sessions on the whole model (cut down to
  the fetched tensors) with every layer's current parameters, one run per joint pass.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp8onnx.calibration.moments import ChannelMoments, PairMoments
from fp8onnx.calibration.stages import DEFAULT_STORE_BUDGET, CutStore, node_reads, plan_stages
from fp8onnx.calibration.stats import TensorStats
from fp8onnx.graph import GraphIndex, NameAllocator, remove_unused
from fp8onnx.runtime import ops

from ._bn_targets import Target

__all__ = ["StagedMeasure", "FullRunner", "FullQuant", "progress_bar"]

log = logging.getLogger("fp8onnx.passes")

#: Prefix of the names a stage model gives its corrected inputs' raw values and constants.
RAW = "bn_calib_raw/"


def _session(model: onnx.ModelProto, providers, custom: bool = False):
    """An onnxruntime session; ``custom``: fp8onnx's, which runs the ai.fp8onnx ops."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Two sessions (float and FP8) take turns; a session's threads spinning after its run
    # steal the cores from the other's: the staged float run of PP-OCRv4 det took 3-5x the
    # whole model's time with spinning, 1.3-1.4x without (2 cores, 3 pages).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if custom:
        from fp8onnx.runtime import InferenceSession

        return InferenceSession(model, sess_options=opts, providers=providers, fold_constants=False)
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=providers)


class FullQuant:
    """The FP8 side as the compiled model will be: each planned activation use read through
    a FakeQuant at its final scale, each planned weight fake-quantized (max scaling of the
    weight as it stands, which after an mse clip is the clipped one).

    ``acts`` maps a node name to its ``(input index, tensor, format, amax)`` uses,
    ``weights`` a weight tensor to ``(format, axis)``. The FakeQuants are InsertQDQ's own
    emulated build (:func:`fp8onnx.qdq.build_activation`); FakeQuant computes what
    onnxruntime's Q/DQ pair does for E4M3/E5M2/INT8, so one op serves every format here.
    """

    def __init__(self, graph, acts: Dict[str, list], weights: Dict[str, tuple], *, saturate: bool = True,
                 pow2: bool = False):
        from fp8onnx import formats, qdq

        self.acts, self.weights, self.pow2 = acts, weights, bool(pow2)
        names = NameAllocator(graph)
        self.built = {}
        for uses in acts.values():
            for _, tensor, fmt, amax in uses:
                if (tensor, fmt) not in self.built:
                    self.built[tensor, fmt] = qdq.build_activation(names, tensor, formats.get(fmt), amax, "emulate",
                                                                   "", saturate, pow2)
        self._fq: Dict[str, np.ndarray] = {}

    def apply(self, nodes: list):
        """Copies of ``nodes`` reading their quantized activations through FakeQuants (each
        inserted before its first reader), and the scales' initializers."""
        out, inits, placed = [], [], set()
        for node in nodes:
            uses = self.acts.get(node.name)
            if not uses:
                out.append(node)
                continue
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for index, tensor, fmt, _ in uses:
                if copy.input[index] != tensor:
                    continue
                b = self.built[tensor, fmt]
                if (tensor, fmt) not in placed:
                    placed.add((tensor, fmt))
                    out.extend(b.nodes)
                    inits.extend(b.initializers)
                copy.input[index] = b.output
            out.append(copy)
        return out, inits

    def weights_for(self, nodes: list, index: GraphIndex) -> Dict[str, np.ndarray]:
        """The fake-quantized planned weights ``nodes`` read."""
        from ._bn_targets import fake_quant_weight

        found = {}
        for node in nodes:
            for name in node.input:
                if name in self.weights and name in index.initializers:
                    if name not in self._fq:
                        fmt, axis = self.weights[name]
                        w = numpy_helper.to_array(index.initializers[name])
                        self._fq[name] = fake_quant_weight(w, fmt, axis, self.pow2)
                    found[name] = self._fq[name]
        return found


def progress_bar(total, progress, desc, unit):
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


class StagedMeasure:
    """Layer by layer in graph order, each layer measured once on final inputs.

    ``run(src, on_layer)`` calls ``on_layer(target, moments)`` after each layer's stage,
    with :class:`PairMoments` of the layer's output (``a``: FP8 weights, every layer above
    already corrected, this one not yet; ``b``: float model); ``on_layer`` updates the
    target's parameters, which the later stages then use. Tensors crossing the cuts live in
    a :class:`CutStore` of ``budget`` bytes (the rest goes to a temporary directory).
    ``probes``: tensors whose :class:`TensorStats` the FP8 side gathers into ``stats`` as
    the corrected model computes them; those after the last layer get stages of their own,
    which run the FP8 side only.
    """

    def __init__(self, model, targets: List[Target], providers, *, budget: int = DEFAULT_STORE_BUDGET,
                 progress=None, probes: Sequence[str] = (), quant: Optional["FullQuant"] = None):
        self.graph, self.targets, self.providers = model.graph, targets, providers
        self.quant = quant
        self.opset = list(model.opset_import)
        self.ir_version = model.ir_version
        self.functions = list(model.functions)  # model-local functions the nodes may call
        self.budget, self.progress = budget, progress
        self.index = GraphIndex(model.graph)
        outs = [t.out for t in targets]
        self.stages = plan_stages(model.graph, outs)
        # Activation statistics of the corrected FP8-weight model, which is what the
        # compiler's calibration would otherwise run once more: graph inputs from the feeds,
        # node outputs where a stage computes them, the rest in stages after the last layer.
        probes = list(dict.fromkeys(probes))
        position = {o: i for i, n in enumerate(self.graph.node) for o in n.output}
        produced = self._produced()
        tail = sorted((p for p in probes if p not in produced and p in position), key=position.__getitem__)
        if tail:
            self.stages = plan_stages(model.graph, outs + tail)
            produced = self._produced()
        self.probe_inputs = [p for p in probes if p in self.index.graph_inputs]
        self.probes_at: Dict[int, List[str]] = {}
        for p in probes:
            if p in produced:
                self.probes_at.setdefault(produced[p], []).append(p)
        for k, t in enumerate(targets):  # a corrected output is observed from the store
            if t.kind == "folded" and t.out in self.probes_at.get(k, ()) and t.out not in self.stages[k].keep:
                self.stages[k].keep.append(t.out)
        # The float side runs in the layers' stages only: it stores what those read.
        self.float_reads = {n for st in self.stages[:len(targets)] for n in st.inputs}
        #: TensorStats by probe name, filled by :meth:`run` (float tensors only).
        self.stats: Dict[str, TensorStats] = {}
        self.dtypes: Dict[str, int] = {}  # element type and rank of each stored tensor, as produced
        self.ranks: Dict[str, int] = {}
        self.peak_store = 0
        self.spilled = 0
        self.peak_disk = 0

    def _produced(self) -> Dict[str, int]:
        """Stage index of every tensor a stage's nodes produce."""
        return {o: k for k, st in enumerate(self.stages) for i in st.nodes for o in self.graph.node[i].output}

    # -- stage models -------------------------------------------------------------------
    def _model(self, stage, fetch: List[str], overrides: Dict[str, np.ndarray], affine: Dict[str, tuple],
               quant: Optional["FullQuant"] = None):
        """The stage's nodes as a model. ``affine`` maps a stage input to the per-channel
        ``(a, c)`` correcting it: the input then arrives as ``RAW + name`` and a Mul and an
        Add in the session compute ``a * x + c`` (onnxruntime's threads, no numpy copy).
        ``quant`` (the FP8 side of a whole-model measurement) fake-quantizes the stage's
        planned activation uses and weights as the compiled model will."""
        nodes = [self.graph.node[i] for i in stage.nodes]
        extra: List[onnx.TensorProto] = []
        if quant is not None:
            nodes, extra = quant.apply(nodes)
            overrides = {**quant.weights_for(nodes, self.index), **overrides}
        reads = {n for node in nodes for n in node_reads(node)}
        inits = [numpy_helper.from_array(overrides[n], n) if n in overrides else self.index.initializers[n]
                 for n in sorted(reads & set(self.index.initializers))]
        pre = []
        for n, (a, c, rank) in sorted(affine.items()):
            shape = (-1,) + (1,) * (rank - 2)
            names = [RAW + n, f"{RAW}{n}_a", f"{RAW}{n}_c", f"{RAW}{n}_ax"]
            inits += [numpy_helper.from_array(a.astype(np.float32).reshape(shape), names[1]),
                      numpy_helper.from_array(c.astype(np.float32).reshape(shape), names[2])]
            pre += [helper.make_node("Mul", [names[0], names[1]], [names[3]], name=names[3]),
                    helper.make_node("Add", [names[3], names[2]], [n], name=f"{RAW}{n}_axc")]

        def vi(n, name=None):
            return helper.make_tensor_value_info(name or n, self.dtypes.get(n) or self.index.elem_type(n)
                                                 or TensorProto.FLOAT, None)

        inputs = [vi(n, RAW + n if n in affine else n) for n in stage.feeds + stage.inputs]
        outputs = [vi(n) for n in fetch]
        graph = helper.make_graph(pre + nodes, f"stage_{stage.out}", inputs, outputs, initializer=inits + extra)
        opset = self.opset
        if extra and not any(o.domain == ops.DOMAIN for o in opset):
            opset = opset + [ops.opset_import()]
        return helper.make_model(graph, opset_imports=opset, ir_version=self.ir_version,
                                 functions=self.functions)

    def _fetch(self, stage, k: int) -> List[str]:
        return sorted(set(stage.keep) | {stage.out} | set(self.probes_at.get(k, ())))

    def _overrides(self, t: Optional[Target]) -> Dict[str, np.ndarray]:
        """FP8-side parameters: this layer's weight fake-quantized (its own correction is
        not applied yet), kept BNs of the layers above with their corrected statistics."""
        p = {t.weight: t.fake_quant(t.w0)} if t is not None else {}
        for u in self.targets:
            if u.kind == "bn-stats" and u is not t:
                p[u.bn.input[3]], p[u.bn.input[4]] = u.mean, u.var
        return p

    # -- the run ------------------------------------------------------------------------
    def run(self, src, on_layer: Callable[[Target, PairMoments], None]) -> None:
        """Each stage in turn; a stage after the last layer (``t`` None) only computes
        probes, on the FP8 side."""
        affine: Dict[str, tuple] = {}  # folded layers done: FP8 output as stored -> (a, c, rank)
        n_feeds = None
        self.stats = {}
        inputs_seen = set()
        bar = progress_bar(len(self.stages), self.progress, "bn calibration", "layer")
        with CutStore(self.budget) as store:
            for k, stage in enumerate(self.stages):
                t = self.targets[k] if k < len(self.targets) else None
                mine = {n: affine[n] for n in stage.inputs if n in affine}
                fetch = self._fetch(stage, k)
                fsess = _session(self._model(stage, fetch, {}, {}), self.providers) if t is not None else None
                qmodel = self._model(stage, fetch, self._overrides(t), mine, self.quant)
                qsess = _session(qmodel, self.providers, custom=self.quant is not None)
                # A folded layer's own output is observed once corrected (kept: see __init__).
                deferred = t is not None and t.kind == "folded" and t.out in self.probes_at.get(k, ())
                probes = [n for n in self.probes_at.get(k, ()) if not (deferred and n == t.out)]
                feed_probes = [n for n in self.probe_inputs if n in stage.feeds and n not in inputs_seen]
                inputs_seen.update(feed_probes)
                moments = PairMoments(t.channels) if t is not None else None
                feeds = iter(src) if stage.feeds or n_feeds is None else iter([{}] * n_feeds)
                i = 0
                for feed in feeds:
                    f_in = {n: feed[n] for n in stage.feeds}
                    q_in = dict(f_in)
                    for n in stage.inputs:
                        if fsess is not None:
                            f_in[n] = store.get(("f", n), i)
                        q_in[RAW + n if n in mine else n] = store.get(("q", n), i)
                    yf = dict(zip(fetch, fsess.run(fetch, f_in))) if fsess is not None else {}
                    yq = dict(zip(fetch, qsess.run(fetch, q_in)))
                    del f_in, q_in
                    if moments is not None:
                        moments.update(yq[stage.out], yf[stage.out])
                    for n in feed_probes:
                        self._observe(n, feed[n])
                    for n in probes:
                        self._observe(n, yq[n])
                    for n in stage.keep:
                        if n in self.float_reads:
                            store.put(("f", n), i, yf[n])
                        store.put(("q", n), i, yq[n])
                        if n not in self.dtypes:
                            self.dtypes[n] = helper.np_dtype_to_tensor_dtype(yq[n].dtype)
                            self.ranks[n] = yq[n].ndim
                    for n in stage.free:  # no later stage reads this feed's copy
                        store.drop(("f", n), i)
                        store.drop(("q", n), i)
                    del yf, yq
                    i += 1
                n_feeds = i
                del fsess, qsess
                if t is not None:
                    on_layer(t, moments)
                if t is not None and t.kind == "folded" and t.out in stage.keep:
                    affine[t.out] = (t.a, t.b - t.a.astype(np.float64) * t.b0, self.ranks[t.out])
                if deferred:
                    self._observe_corrected(store, t.out, affine[t.out], n_feeds)
                if bar is not None:
                    bar.update(1)
            self.peak_store, self.spilled, self.peak_disk = store.peak, store.spilled, store.peak_disk
        if bar is not None:
            bar.close()

    def _observe(self, name: str, value) -> None:
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            return  # no stats for int or bool tensors, as in calibration
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = TensorStats.empty(name)
        st.update(value)

    def _observe_corrected(self, store, name: str, corr: tuple, n_feeds: int) -> None:
        """Stats of a folded layer's output as later stages read it: ``a * y + c`` in
        float32, the Mul and Add their sessions run."""
        a, c, rank = corr
        shape = (-1,) + (1,) * (rank - 2)
        a32, c32 = a.astype(np.float32).reshape(shape), c.astype(np.float32).reshape(shape)
        for i in range(n_feeds):
            self._observe(name, store.get(("q", name), i) * a32 + c32)


class FullRunner:
    """Sessions on a copy of the model holding the current (fake-quantized) parameters.

    Each pass gets a session whose parameters are baked in as initializers and whose
    graph is cut down to what the fetched tensors need: onnxruntime runs every node of
    a graph whatever is fetched, and constant weights let it prepack them. Measured on
    PP-OCR cls (32 lines): a one-layer pass 0.03-0.5 s instead of 1.2 s with every
    parameter fed as an input, session creation 0.05-0.2 s.
    """

    def __init__(self, model, targets, providers):
        self.providers = providers
        self.base = onnx.ModelProto()
        self.base.CopyFrom(model)
        nodes = {n.name: n for n in self.base.graph.node}
        names = NameAllocator(self.base)
        for t in targets:  # a bias slot for every folded Conv, so one model fits all passes
            if t.kind == "folded":
                if t.bias:
                    t.bias_name = t.bias
                else:
                    t.bias_name = names.tensor(f"{t.node.name}_bias")
                    node = nodes[t.node.name]
                    while len(node.input) < 2:
                        node.input.append("")
                    node.input.append(t.bias_name)
                    self.base.graph.initializer.append(numpy_helper.from_array(t.b0, t.bias_name))
        del self.base.graph.output[:]
        self._fq: Dict[str, tuple] = {}

    def session(self, targets, *, quantized: bool, outputs: List[str]):
        m = onnx.ModelProto()
        m.CopyFrom(self.base)
        inits = {i.name: i for i in m.graph.initializer}
        for name, value in self.params(targets, quantized).items():
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
        m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
        remove_unused(m.graph)
        return _session(m, self.providers)

    def params(self, targets, quantized: bool) -> Dict[str, np.ndarray]:
        """Current corrections, with fake-quantized weights (cached per scale) or float ones."""
        p = {}
        for t in targets:
            if quantized:
                key = None if t.a is None else t.a.tobytes()
                hit = self._fq.get(t.weight)
                if hit is None or hit[0] != key:
                    hit = self._fq[t.weight] = (key, t.fake_quant(t.weight_now()))
                p[t.weight] = hit[1]
            if t.kind == "bn-stats":
                p[t.bn.input[3]] = t.mean if quantized else t.mean0
                p[t.bn.input[4]] = t.var if quantized else t.var0
            else:
                p[t.bias_name] = t.b if quantized else t.b0
        return p

    def run(self, src, targets, float_sess, *, progress=None, tag="", float_stats=True, q_stats=True):
        """One pass over the data with every layer's current parameters; the float model
        runs too when ``float_sess`` is given. Returns float moments, FP8 moments (by
        tensor) and the MSE of each reported tensor against the float model."""
        fetch = sorted({t.out for t in targets} | ({t.reported for t in targets} if float_sess else set()))
        qsess = self.session(targets, quantized=True, outputs=fetch)
        fmom = {t.out: ChannelMoments(t.channels) for t in targets} if float_sess and float_stats else {}
        qmom = {t.out: ChannelMoments(t.channels) for t in targets} if q_stats else {}
        sq = {t.reported: 0.0 for t in targets}
        cnt = {t.reported: 0 for t in targets}
        bar = progress_bar(src.num_samples, progress, f"bn calibration: {tag}", "sample")
        for feed in src:
            yq = dict(zip(fetch, qsess.run(fetch, feed)))
            for name, mom in qmom.items():
                mom.update(yq[name])
            if float_sess is not None:
                yf = dict(zip(fetch, float_sess.run(fetch, feed)))
                for name, mom in fmom.items():
                    mom.update(yf[name])
                for name in sq:
                    sq[name] += float(np.square(yq[name] - yf[name], dtype=np.float64).sum())
                    cnt[name] += yq[name].size
                del yf
            del yq
            if bar is not None:
                bar.update(src.samples_in(feed))
        if bar is not None:
            bar.close()
        return fmom, qmom, {k: sq[k] / max(cnt[k], 1) for k in sq}
