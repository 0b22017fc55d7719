"""GraphSurgeonPass: write a pass as a function of an onnx-graphsurgeon ``Graph``.

Tool authors who think in onnx-graphsurgeon terms get a :class:`~fp8onnx.passinfra.Pass`
without touching protobufs::

    def fold_identities(graph):            # gs.Graph -> bool (whether it changed)
        changed = False
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            ...
        return changed

    PassManager([GraphSurgeonPass(fold_identities)])(model)

The adapter imports the model into graphsurgeon, calls the function, and, when it
reports a change, runs ``cleanup().toposort()`` and exports back in place. Export loses
what graphsurgeon does not model, so the adapter carries it over: ``metadata_props``
(the fp8onnx recipe, dropped by export), the model's doc string, producer and version;
and it guards the element type of FP8 initializers, which graphsurgeon 0.6's dtype table
would relabel (it maps ml_dtypes' float8_e4m3fnuz to FLOAT8E4M3FN) if a pass made it
materialise them as numpy arrays.
"""
from __future__ import annotations

from typing import Callable, Optional

import onnx

from .graph import iter_graphs
from .passinfra import Pass, PassResult

__all__ = ["GraphSurgeonPass"]


class GraphSurgeonPass(Pass):
    def __init__(self, fn: Callable[[object], bool], *, name: Optional[str] = None, cleanup: bool = True):
        self.name = name or getattr(fn, "__name__", "graphsurgeon")
        super().__init__()
        self.fn, self.cleanup = fn, cleanup

    def call(self, model):
        import onnx_graphsurgeon as gs

        graph = gs.import_onnx(model)
        if not self.fn(graph):
            return PassResult(model, False)
        if self.cleanup:
            graph.cleanup().toposort()
        new = gs.export_onnx(graph, do_type_check=False)
        _restore(model, new)
        model.CopyFrom(new)
        return PassResult(model, True)


def _restore(old: onnx.ModelProto, new: onnx.ModelProto) -> None:
    new.ir_version = max(new.ir_version, old.ir_version)
    new.doc_string, new.model_version = old.doc_string, old.model_version
    new.producer_name, new.producer_version, new.domain = old.producer_name, old.producer_version, old.domain
    del new.metadata_props[:]
    new.metadata_props.extend(old.metadata_props)
    domains = {o.domain for o in new.opset_import}
    new.opset_import.extend(o for o in old.opset_import if o.domain not in domains)
    types = {t.name: t.data_type for g in iter_graphs(old.graph) for t in g.initializer}
    for g in iter_graphs(new.graph):
        for t in g.initializer:
            if t.name in types and t.data_type != types[t.name] and t.raw_data:
                t.data_type = types[t.name]  # same codes, the label gs got wrong
