"""What an evaluation returns: per-output fidelity, per-layer figures, the task metric.

:class:`EvalResult` serialises to JSON (``to_dict``/``from_dict`` round-trip; infinite
SQNRs are written as the strings ``"inf"``/``"-inf"``), renders the HTML report and
annotates the FP8 model for Netron.

>>> r = EvalResult(outputs=[OutputFidelity("y", cosine=0.99, sqnr_db=20.0, max_abs_error=0.1)])
>>> EvalResult.from_dict(r.to_dict()) == r
True
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

from .stats import Log2Histogram

__all__ = ["OutputFidelity", "LayerFigures", "EvalResult", "TOP1_RULE", "within_loss"]

#: Which outputs get top-1 agreement. Shape alone misleads: rank-4 outputs are maps
#: whose last axis is a width, a YOLO head [1, 84, 8400] ends in anchors and a sentence
#: embedding [N, 384] has no classes (measured: "agreement" 0.36 and 0.75 at cosine
#: 0.998 and 0.992), so the producer must be a scoring op too.
TOP1_RULE = ("float output of rank 2 or 3 with last dim > 1, made by Softmax/LogSoftmax/Sigmoid or "
             "a Gemm/MatMul/Conv layer through only reshapes or a bias Add (class scores [N, C], "
             "sequence scores [N, T, C]): argmax over the last axis, agreement over all positions")


def within_loss(loss: Optional[float], target: float) -> bool:
    """``loss <= target`` for a relative loss computed in floating point; None is never within.

    Losses are mostly ratios of counts: 4 flipped words of 400 is a loss of exactly 1%, but
    ``(1.0 - 0.99) / 1.0`` is 0.010000000000000009, which a bare ``<=`` rejects (the tuner
    ran 100 trials on g2p_en past a trial that met 1%). The slack is far below any count's step.
    """
    return loss is not None and loss <= target + 1e-12


def _num_out(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _num_in(v):
    return float(v) if v in ("inf", "-inf", "nan") else v


@dataclass
class OutputFidelity:
    """FP8 against FP32 on one model output, over all evaluated samples."""

    name: str
    cosine: Optional[float] = None
    sqnr_db: Optional[float] = None
    max_abs_error: Optional[float] = None
    top1_agreement: Optional[float] = None
    exact_match: Optional[float] = None  # non-float outputs (ids, masks): fraction equal
    elements: int = 0
    nonfinite: int = 0


@dataclass
class LayerFigures:
    """One quantized tensor: its error against the float model and its range figures.

    ``sqnr_db``: activations, the FP8 model's dequantized tensor against the float
    model's (error accumulated up to this point); weights, the dequantized weight
    against the float weight. ``local_sqnr_db`` (activations): the dequantized tensor
    against the FP8 model's own tensor before Q, i.e. this layer's quantization error
    alone. ``saturation``: fraction of values beyond the format's max after scaling;
    ``underflow``: fraction of non-zero values that quantize to zero.
    ``hist``: log2 histogram of |float value| / scale (per channel for weights).
    """

    name: str
    tensor: str
    kind: str
    format: str
    consumers: List[str] = field(default_factory=list)
    sqnr_db: Optional[float] = None
    local_sqnr_db: Optional[float] = None
    saturation: Optional[float] = None
    underflow: Optional[float] = None
    amax_observed: Optional[float] = None
    amax_float: Optional[float] = None
    amax_calibrated: Optional[float] = None
    scale: Optional[float] = None
    axis: Optional[int] = None
    channels: Optional[int] = None
    elements: int = 0
    note: str = ""
    hist: Optional[Log2Histogram] = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = {f.name: _num_out(getattr(self, f.name)) for f in fields(self) if f.name != "hist"}
        d["hist"] = self.hist.to_dict() if self.hist is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerFigures":
        d = {k: _num_in(v) for k, v in d.items()}
        hist = d.pop("hist", None)
        return cls(**d, hist=Log2Histogram.from_dict(hist) if hist else None)

    def summary(self) -> str:
        """One line for a Netron doc string or a log."""
        parts = [f"SQNR {self.sqnr_db:.1f} dB" if self.sqnr_db is not None else "SQNR n/a"]
        if self.local_sqnr_db is not None:
            parts.append(f"local SQNR {self.local_sqnr_db:.1f} dB")
        if self.saturation is not None:
            parts.append(f"saturation {100 * self.saturation:.3g}%")
        if self.underflow is not None:
            parts.append(f"underflow {100 * self.underflow:.3g}%")
        if self.amax_observed is not None:
            parts.append(f"amax observed {self.amax_observed:.4g}")
        if self.amax_calibrated is not None:
            parts.append(f"calibrated {self.amax_calibrated:.4g}")
        return ", ".join(parts)


def _sort_key(layer: LayerFigures):
    return (layer.sqnr_db is None, layer.sqnr_db if layer.sqnr_db is not None else 0.0, layer.name)


@dataclass
class EvalResult:
    """Outcome of :func:`fp8onnx.evaluate`; ``layers`` are sorted worst SQNR first."""

    outputs: List[OutputFidelity] = field(default_factory=list)
    layers: List[LayerFigures] = field(default_factory=list)
    samples: int = 0
    feeds: int = 0
    metric_fp32: Optional[float] = None
    metric_fp8: Optional[float] = None
    relative_loss: Optional[float] = None
    seconds: float = 0.0
    top1_rule: str = TOP1_RULE
    notes: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.layers.sort(key=_sort_key)

    @property
    def fidelity(self) -> float:
        """Top-1 agreement of the first output that has one, else the first output's cosine."""
        for o in self.outputs:
            if o.top1_agreement is not None:
                return o.top1_agreement
        for o in self.outputs:
            if o.cosine is not None:
                return o.cosine
        return self.outputs[0].exact_match if self.outputs else float("nan")

    def layer(self, name: str) -> LayerFigures:
        """The figures of the inserted tensor ``name`` or of the float tensor it stands for."""
        for layer in self.layers:
            if name in (layer.name, layer.tensor):
                return layer
        raise KeyError(f"no quantized tensor {name!r} in this evaluation")

    def to_dict(self) -> dict:
        d = {k: _num_out(v) for k, v in asdict(self).items() if k not in ("outputs", "layers")}
        d["outputs"] = [{k: _num_out(v) for k, v in asdict(o).items()} for o in self.outputs]
        d["layers"] = [layer.to_dict() for layer in self.layers]
        d["fidelity"] = _num_out(self.fidelity)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        d = {k: _num_in(v) for k, v in d.items() if k != "fidelity"}
        d["outputs"] = [OutputFidelity(**{k: _num_in(v) for k, v in o.items()}) for o in d.get("outputs", [])]
        d["layers"] = [LayerFigures.from_dict(x) for x in d.get("layers", [])]
        return cls(**d)

    def save_json(self, path) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        _atomic_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    def save_html(self, path, *, top: int = 6, title: str = "fp8onnx evaluation") -> None:
        """Write the self-contained HTML report (needs matplotlib), atomically."""
        from .html import render_html

        _atomic_text(path, render_html(self, top=top, title=title))

    def annotate(self, model):
        """A copy of the FP8 ``model`` whose inserted nodes' doc strings carry their figures."""
        from .annotate import annotate_model

        return annotate_model(model, self)

    def summary_text(self, limit: int = 10) -> str:
        lines = [f"evaluated {self.samples} samples ({self.feeds} feeds) in {self.seconds:.2f} s"]
        for o in self.outputs:
            if o.cosine is None:
                lines.append(f"  output {o.name}: exact match {o.exact_match:.4f}")
                continue
            line = (f"  output {o.name}: cosine {o.cosine:.6f}, SQNR {o.sqnr_db:.2f} dB, "
                    f"max abs error {o.max_abs_error:.4g}")
            if o.top1_agreement is not None:
                line += f", top-1 agreement {o.top1_agreement:.4f}"
            lines.append(line)
        if self.metric_fp32 is not None:
            loss = "n/a" if self.relative_loss is None else f"{100 * self.relative_loss:.3f}%"
            lines.append(f"  metric: FP32 {self.metric_fp32:.6g}, FP8 {self.metric_fp8:.6g}, relative loss {loss}")
        if self.layers:
            lines.append(f"worst of {len(self.layers)} quantized tensors:")
            for layer in self.layers[:limit]:
                lines.append(f"  {layer.kind:10s} {layer.format:8s} {layer.tensor}: {layer.summary()}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _atomic_text(path, text: str) -> None:
    from ..cli import write_text_atomic

    write_text_atomic(os.fspath(path), text)
