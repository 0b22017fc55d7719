"""Let per-tensor ``FakeQuant`` nodes run on ONNX Runtime's blocked (NCHWc) tensors.

Why: on x86 ONNX Runtime's NchwcTransformer rewrites Conv into ``com.microsoft.nchwc``
Conv working on channel-blocked tensors and keeps whole Conv chains in that layout.
It knows nothing of custom ops, so every activation FakeQuant between two Convs gets
``ReorderOutput -> FakeQuant -> ReorderInput`` around it: two extra passes over the
tensor besides the fake-quant itself. On MobileNetV2 (E3M4, one thread, 51 such
triples) the reorders cost 3.3-4.3 ms against 2.5-3.5 ms for the FakeQuants and
5.6-6.5 ms for the Convs (onnxruntime's profiler, ``tools/bench_runtime.py --zoo``).

A per-tensor fake-quant is element-wise with one scale, so it gives the same value for
each element in any layout; the blocked layout only adds padding channels, which hold
finite values (zeros, or an activation of zero such as Sigmoid's 0.5) that the next
NCHWc Conv multiplies by zero-padded weights. That needs the fake-quant of a finite
value to stay finite, which holds when it saturates (the default; INT8 always does):
without saturation 0.5 could overflow a tiny scale to NaN, and 0 * NaN would reach
the real channels, so those nodes stay where they are. So this module rewrites ONNX Runtime's *optimized* graph::

    t_nchwc -> ReorderOutput -> FakeQuant(s) -> ReorderInput -> NchwcConv
    becomes
    t_nchwc -> FakeQuant(s) -> NchwcConv

keeping a ``ReorderOutput`` for any consumer that still wants the plain tensor. The
session (session.py) gets the optimized graph from ONNX Runtime itself (a first
session with ``optimized_model_filepath``), rewrites it here and runs it with graph
optimizations off, so results are bit-identical to the session without the rewrite
(tested on real models in tests/test_runtime_layout.py).

Only per-tensor FakeQuants (a 1-element initializer scale) are moved: a per-channel
scale would need the channel index, which the blocked layout changes.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from .ops import DOMAIN, FAKE_QUANT

__all__ = ["NCHWC_DOMAIN", "fake_quant_in_blocked_layout", "may_reorder_fake_quants",
           "optimized_blocked_model"]

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"


def may_reorder_fake_quants(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph has a Conv and a FakeQuant whose input is not an
    initializer: only then can ONNX Runtime put reorders around a FakeQuant (it blocks
    Convs only, and weight FakeQuants are folded away), so a model without Conv (a
    transformer) never pays for the second graph optimization."""
    inits = {t.name for t in model.graph.initializer}
    nodes = model.graph.node
    return (any(n.op_type == "Conv" and n.domain in ("", "ai.onnx") for n in nodes)
            and any(n.domain == DOMAIN and n.op_type == FAKE_QUANT and n.input[0] not in inits
                    for n in nodes))


def _attr(node, name, default=0):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is(node, op_type):
    return node is not None and node.op_type == op_type and node.domain == NCHWC_DOMAIN


def _scalar_initializer(inits, name) -> bool:
    t = inits.get(name)
    return t is not None and int(np.prod(t.dims, dtype=np.int64)) == 1


def fake_quant_in_blocked_layout(model: onnx.ModelProto):
    """Rewrite ``ReorderOutput -> FakeQuant -> ReorderInput`` in an ONNX Runtime-optimized
    model so that the FakeQuant reads and writes the blocked tensor; edits ``model`` in
    place and returns ``(model, number of FakeQuants moved)``.

    >>> import onnx
    >>> fake_quant_in_blocked_layout(onnx.ModelProto())[1]
    0
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    graph_outputs = {o.name for o in graph.output}

    taken = set(producer) | set(inits) | {i.name for i in graph.input}
    dropped, rename, insert_after = set(), {}, {}
    moved = 0
    for fq in graph.node:
        if fq.domain != DOMAIN or fq.op_type != FAKE_QUANT or len(fq.input) != 2:
            continue
        if not _scalar_initializer(inits, fq.input[1]):
            continue  # per-channel (or run-time) scale: the channel index matters
        if not _attr(fq, "saturate", 1) and _attr(fq, "format", b"") not in (b"int8", "int8"):
            continue  # overflow -> NaN/Inf in the padding channels (see the module note)
        reorder_out = producer.get(fq.input[0])
        if not _is(reorder_out, "ReorderOutput") or _attr(reorder_out, "channels_last"):
            continue
        users = consumers[fq.output[0]]
        reorder_ins = [u for u in users if _is(u, "ReorderInput") and not _attr(u, "channels_last")]
        if not reorder_ins:
            continue  # nothing downstream wants the blocked layout: no reorder to save
        plain_users = len(reorder_ins) < len(users) or fq.output[0] in graph_outputs
        plain_out = fq.output[0]
        blocked_out = f"{plain_out}_nchwc"
        while blocked_out in taken:
            blocked_out += "_"
        taken.add(blocked_out)
        fq.input[0] = reorder_out.input[0]
        fq.output[0] = blocked_out
        for ri in reorder_ins:
            rename[ri.output[0]] = blocked_out
            dropped.add(id(ri))
        if plain_users:  # the others still read the plain tensor: reorder once, after
            insert_after[id(fq)] = helper.make_node(
                "ReorderOutput", [blocked_out], [plain_out], name=f"{fq.name}_reorder_output",
                domain=NCHWC_DOMAIN, channels=_attr(reorder_out, "channels"), channels_last=0)
        if (reorder_out.output[0] not in graph_outputs
                and all(u is fq for u in consumers[reorder_out.output[0]])):
            dropped.add(id(reorder_out))
        moved += 1
    if not moved:
        return model, 0
    nodes = []
    for n in graph.node:
        if id(n) in dropped:
            continue
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
        nodes.append(n)
        if id(n) in insert_after:
            nodes.append(insert_after[id(n)])
    del graph.node[:]
    graph.node.extend(nodes)
    log.debug("moved %d FakeQuant nodes into the NCHWc layout", moved)
    return model, moved


def optimized_blocked_model(api, model, *, level, arena, configure, create, path_arg):
    """``(model, moved)``: ONNX Runtime's own optimized graph of ``model`` with its
    FakeQuants moved into the NCHWc layout, or ``(None, 0)`` when none moved or anything
    failed (the caller then builds its session the usual way, so this never costs
    correctness).

    A first session, on one thread, optimizes ``model`` (``level``, the caller's
    rewrites and custom ops through ``configure(options)``, ``create(options, model)``)
    and saves the graph through ``optimized_model_filepath``; ONNX Runtime offers no
    other way to get its optimized graph.
    """
    options = api.out(api.CreateSessionOptions)
    session = None
    try:
        with tempfile.TemporaryDirectory(prefix="fp8onnx_layout_") as tmp:
            path = path_arg(os.path.join(tmp, "optimized.onnx"))
            api.check(api.SetIntraOpNumThreads(options, 1))  # no thread pool needed
            api.check(api.SetInterOpNumThreads(options, 1))
            # Error level: ONNX Runtime warns that an NCHWc graph fits this machine only,
            # which is all it is used for.
            api.check(api.SetSessionLogSeverityLevel(options, 3))
            api.check(api.SetSessionGraphOptimizationLevel(options, level))
            if not arena:
                api.check(api.DisableCpuMemArena(options))
            configure(options)
            api.check(api.SetOptimizedModelFilePath(options, path))
            session = create(options, model)
            api.ReleaseSession(session)
            session = None
            optimized = onnx.load(os.path.join(tmp, "optimized.onnx"))
        optimized, moved = fake_quant_in_blocked_layout(optimized)
    except Exception as e:  # e.g. a model over 2 GB, which ONNX Runtime cannot save inline
        log.debug("NCHWc FakeQuant rewrite skipped: %s", e)
        return None, 0
    finally:
        if session:
            api.ReleaseSession(session)
        api.ReleaseSessionOptions(options)
    return (optimized, moved) if moved else (None, 0)
