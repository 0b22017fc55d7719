"""UpgradeOpset: brings the default-domain (ai.onnx) opset up to at least ``target``.

FP8 Q/DQ needs opset 19 (``QuantizeLinear``/``DequantizeLinear`` with float8 types), so

    opset_import {"": 12}   ->   opset_import {"": 19}   (ops rewritten by onnx.version_converter)

Other domains (ai.onnx.ml, custom) are untouched. A model already at ``target`` or above
is left alone (``modified=False``). What the converter drops is put back: metadata_props,
producer name/version, domain, model version and doc strings. Model-local functions are
inlined first (the converter does not upgrade them). Above ``detach_bytes`` of tensor
data the converter runs on a copy whose weights of 1 MiB or more are stubs (no adapter
reads large initializers), and the result adopts the model's own weights: no second copy
in memory and no 2 GB serialisation limit.

Where the converter fails, raises UserError naming the model's opset, the target, the
converter's reason, and the fix (re-export with opset >= target).

Requires nothing. An IR version too old for the target is raised to the minimum (IR 9
for opset 19); a model from before IR 4, where every initializer had to be listed as a
graph input, loses those inputs, so its weights stay constants rather than becoming
overridable inputs. Constant nodes the converter creates (Squeeze axes, Split sizes
turned into inputs) become initializers, as LiftConstants would make them, so running
LiftConstants before or after this pass gives the same model.

Example::

    UpgradeOpset(target=19)(model).modified   # True when the opset was raised
"""
from __future__ import annotations

import logging
import re

import onnx
from onnx import version_converter

from fp8onnx import graph as G
from fp8onnx import modelio
from fp8onnx.errors import UserError
from fp8onnx.passinfra import Pass, PassResult

from .lift_constants import lift_graph_constants

__all__ = ["UpgradeOpset", "default_opset"]

log = logging.getLogger("fp8onnx.passes")

_KEPT_FIELDS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version (1 when it imports none, as the spec says)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1


class UpgradeOpset(Pass):
    """Converts the model to default-domain opset ``target`` when it is below it."""

    def __init__(self, target: int = 19, *, detach_bytes: int = 64 << 20) -> None:
        super().__init__()
        self.target = target
        self.detach_bytes = detach_bytes

    def call(self, model):
        current = default_opset(model)
        if current >= self.target:
            return PassResult(model, False)
        kept = {f: getattr(model, f) for f in _KEPT_FIELDS}
        metadata = [(p.key, p.value) for p in model.metadata_props]
        graph_doc = model.graph.doc_string
        ir_version = model.ir_version
        before = _constant_outputs(model)
        # Above detach_bytes the converter gets a copy without the large weights: no
        # second copy of them in memory, and no 2 GB serialisation limit.
        weightless = modelio.tensor_bytes(model) > self.detach_bytes
        try:
            if len(model.functions):
                from onnx import inliner

                log.info("inlining %d model-local functions before the opset upgrade", len(model.functions))
                model.CopyFrom(inliner.inline_local_functions(model))
            unknown = _unknown_ops(model, current)
            if unknown:
                raise ValueError(f"op {unknown[0]!r} of the default domain has no schema at opset {current}")
            source = G.weightless_copy(model) if weightless else model
            converted = version_converter.convert_version(source, self.target)
            del source
        except Exception as e:
            reason = _short(str(e))
            raise UserError(
                f"cannot upgrade the model from ONNX opset {current} to opset {self.target} "
                f"(version converter: {reason}); re-export the model with opset >= {self.target} "
                f"from its framework, e.g. torch.onnx.export(..., opset_version={self.target})"
            ) from e
        if weightless:
            G.adopt_structure(model, converted)
        else:
            model.CopyFrom(converted)
        del converted
        for f, v in kept.items():
            setattr(model, f, v)
        del model.metadata_props[:]
        for k, v in metadata:
            model.metadata_props.add(key=k, value=v)
        model.graph.doc_string = graph_doc
        # The converter leaves ir_version as it was; an opset needs a minimum IR version
        # (opset 19 -> IR 9) for runtimes to accept the model.
        model.ir_version = max(ir_version, _min_ir_version(self.target))
        # The converter turns attributes into inputs (Squeeze axes, Split sizes...) through
        # new Constant nodes; make them initializers like LiftConstants would, so running
        # LiftConstants before or after this pass gives the same model.
        new = _constant_outputs(model) - before
        if new:
            for g in G.iter_graphs(model.graph):
                lift_graph_constants(g, only=new)
        if ir_version < 4:
            # IR < 4 had to list every initializer as a graph input; from IR 4 on that
            # would make the weights overridable inputs instead of constants.
            dropped = G.drop_initializer_inputs(model.graph)
            log.info("IR %d -> %d: %d initializers no longer listed as graph inputs", ir_version,
                     model.ir_version, len(dropped))
        log.info("upgraded opset %d -> %d", current, default_opset(model))
        return PassResult(model, True)


def _constant_outputs(model: onnx.ModelProto) -> set:
    return {n.output[0] for g in G.iter_graphs(model.graph) for n in g.node if n.op_type == "Constant" and n.output}


def _min_ir_version(opset: int) -> int:
    for (domain, ops), ir in sorted(onnx.helper.OP_SET_ID_VERSION_MAP.items(), key=lambda kv: kv[1]):
        if domain in ("", "ai.onnx") and ops >= opset:
            return ir
    return onnx.IR_VERSION


def _short(message: str, limit: int = 160) -> str:
    """The converter's reason on one line, without its C++ source location and assertion."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = " ".join(lines) or "unknown error"
    text = re.sub(r"^\S+\.cc:\d+:\s*\w+:\s*(Assertion `.*?` failed:\s*)?", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_ops(model: onnx.ModelProto, opset: int):
    """Default-domain op types with no schema at ``opset`` (the converter cannot map them)."""
    unknown = set()
    for g in G.iter_graphs(model.graph):
        for n in g.node:
            if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, max_inclusive_version=opset):
                unknown.add(n.op_type)
    return sorted(unknown)
