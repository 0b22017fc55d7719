"""Cut a graph into stages, one per measured tensor, and hold the tensors crossing the cuts.

Layer-by-layer calibration (:class:`fp8onnx.passes.BatchNormCalibration`) measures a
layer's output only after every layer above it is final. Running the graph prefix a layer
needs for every layer costs about L/2 forward passes on a chain of L layers (measured on
PP-OCRv4 det, 62 Convs, 8 pages of 736x1472: 76-346 s). Instead the graph is run once,
stage by stage: stage ``k`` holds the nodes that compute measured tensor ``k`` and were not
computed by an earlier stage, and reads what earlier stages left in a :class:`CutStore`
(the tensors produced before the cut and read after it), for every calibration feed. Each
node then runs once per feed, and a stage's inputs are final when it runs::

    stages = plan_stages(model.graph, ["conv1_out", "conv2_out"])
    stages[1].nodes, stages[1].inputs, stages[1].keep   # node indices, what it reads, what it leaves

A :class:`CutStore` keeps arrays in memory up to ``budget`` bytes and writes the rest to a
temporary directory (np.save, read back once per reader), so memory is bounded by the
budget whatever the number of feeds; every array is freed after its last reader.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx

from ..graph import GraphIndex, outer_scope_inputs, subgraphs

__all__ = ["Stage", "plan_stages", "node_reads", "CutStore", "DEFAULT_STORE_BUDGET"]

log = logging.getLogger(__name__)

#: Bytes a CutStore holds in memory before it writes arrays to disk.
DEFAULT_STORE_BUDGET = 512 << 20


@dataclass
class Stage:
    """The nodes computing ``out`` that no earlier stage computed.

    ``nodes``: indices into ``graph.node`` in graph order; ``inputs``: tensors the nodes read
    that earlier stages produced; ``feeds``: graph inputs they read; ``keep``: tensors they
    produce that later stages read (``out`` among them when it is read later); ``free``:
    store entries no stage after this one reads.
    """

    out: str
    nodes: List[int] = field(default_factory=list)
    inputs: List[str] = field(default_factory=list)
    feeds: List[str] = field(default_factory=list)
    keep: List[str] = field(default_factory=list)
    free: List[str] = field(default_factory=list)


def node_reads(node: onnx.NodeProto) -> List[str]:
    """Every tensor ``node`` reads, outer-scope names used inside its subgraphs included."""
    names = [i for i in node.input if i]
    for g in subgraphs(node):
        names.extend(outer_scope_inputs(g))
    return names


def plan_stages(graph: onnx.GraphProto, outs: Sequence[str]) -> List[Stage]:
    """One stage per name of ``outs`` (tensors produced by nodes of ``graph``), in that order.

    A stage holds the not yet assigned ancestors of its tensor; nodes that no tensor of
    ``outs`` needs are in no stage. ``outs`` must be in an order where no tensor depends
    on a later one (graph order does it); else ValueError.
    """
    index = GraphIndex(graph)
    position = {id(n): i for i, n in enumerate(graph.node)}
    stage_of: Dict[int, int] = {}
    stages: List[Stage] = []
    for k, out in enumerate(outs):
        if out not in index.producer:
            raise ValueError(f"{out!r} is produced by no node of graph {graph.name!r}")
        if position[id(index.producer[out])] in stage_of:
            raise ValueError(f"{out!r} was computed by an earlier stage: order the tensors as the graph does")
        stage = Stage(out)
        stack = [index.producer[out]]
        while stack:
            node = stack.pop()
            i = position[id(node)]
            if i in stage_of:
                continue
            stage_of[i] = k
            stage.nodes.append(i)
            for name in node_reads(node):
                p = index.producer.get(name)
                if p is not None and position[id(p)] not in stage_of:
                    stack.append(p)
        stage.nodes.sort()
        stages.append(stage)
    produced_in: Dict[str, int] = {}
    for i, k in stage_of.items():
        for o in graph.node[i].output:
            if o:
                produced_in[o] = k
    last_read: Dict[str, int] = {}
    for k, stage in enumerate(stages):
        ins, feeds = set(), set()
        for i in stage.nodes:
            for name in node_reads(graph.node[i]):
                src = produced_in.get(name)
                if src is not None and src != k:
                    if src > k:
                        raise ValueError(f"stage of {stage.out!r} reads {name!r} from a later stage: "
                                         "order the tensors as the graph does")
                    ins.add(name)
                    last_read[name] = max(last_read.get(name, -1), k)
                elif src is None and name in index.graph_inputs:
                    feeds.add(name)
        stage.inputs, stage.feeds = sorted(ins), sorted(feeds)
    for name, k in last_read.items():
        stages[produced_in[name]].keep.append(name)
        stages[k].free.append(name)
    for stage in stages:
        stage.keep.sort()
        stage.free.sort()
    return stages


class CutStore:
    """Arrays by (key, feed index), in memory up to ``budget`` bytes, the rest on disk.

    ``put`` keeps a reference, no copy (onnxruntime returns fresh arrays); ``get`` reads
    it back (from disk when spilled); ``drop`` forgets one. Keys are any hashable. Close it
    (or use it as a context manager) to delete the temporary directory.
    """

    def __init__(self, budget: int = DEFAULT_STORE_BUDGET):
        self.budget = int(budget)
        self.in_memory = 0
        self.peak = 0
        self.spilled = 0
        # Array bytes on disk now and at most, so a report can say what the spill cost.
        self.on_disk = 0
        self.peak_disk = 0
        self._mem: Dict[tuple, np.ndarray] = {}
        self._disk: Dict[tuple, tuple] = {}
        self._dir: Optional[str] = None

    def put(self, key, feed: int, value: np.ndarray) -> None:
        k = (key, feed)
        self._forget(k)
        if self.in_memory + value.nbytes <= self.budget:
            self._mem[k] = value
            self.in_memory += value.nbytes
            self.peak = max(self.peak, self.in_memory)
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="fp8onnx_cut_")
            log.info("cut store: over %d MB in memory, writing to %s", self.budget >> 20, self._dir)
        path = os.path.join(self._dir, f"{self.spilled}.npy")  # spilled only grows: a fresh name
        np.save(path, value, allow_pickle=False)
        self._disk[k] = (path, value.nbytes)
        self.spilled += 1
        self.on_disk += value.nbytes
        self.peak_disk = max(self.peak_disk, self.on_disk)

    def get(self, key, feed: int) -> np.ndarray:
        k = (key, feed)
        if k in self._mem:
            return self._mem[k]
        return np.load(self._disk[k][0], allow_pickle=False)

    def drop(self, key, feed: int) -> None:
        """Forget one feed's array of ``key`` (its memory or its file)."""
        self._forget((key, feed))

    def _forget(self, k) -> None:
        v = self._mem.pop(k, None)
        if v is not None:
            self.in_memory -= v.nbytes
        spilled = self._disk.pop(k, None)
        if spilled is not None:
            os.unlink(spilled[0])
            self.on_disk -= spilled[1]

    def close(self) -> None:
        self._mem.clear()
        self._disk.clear()
        self.in_memory = self.on_disk = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
