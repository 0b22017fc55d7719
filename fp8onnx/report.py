"""The compile report: per-unit decisions with reasons, counts, sizes and timings.

``build_report`` returns a JSON-serialisable dict; ``summary_text`` renders the short
summary the CLI prints.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from .modelio import tensor_bytes

__all__ = ["build_report", "summary_text"]


def build_report(model, source, plan, inserted, recipe, pass_times, *, calib_seconds=0.0,
                 total_seconds=0.0) -> dict:
    by_op = defaultdict(Counter)
    partial = Counter()
    for d in plan.units:
        if d.status == "float":
            continue
        label = "/".join(sorted({f for f in (d.weight_format if d.weight_uses else None,
                                             d.activation_format if d.activation_uses else None) if f}))
        by_op[d.op_type][label] += 1
        if d.status != "quantized":
            partial[d.status] += 1
    float_reasons = Counter()
    for f in plan.float_nodes:
        float_reasons[(f.op_type, f.reason)] += 1
    for d in plan.units:
        if d.status == "float":
            float_reasons[(d.op_type, "; ".join(d.notes) or "kept float")] += 1
    return {
        "recipe": recipe.to_dict(),
        "summary": {
            "quantized_by_op": {op: dict(sorted(c.items())) for op, c in sorted(by_op.items())},
            "units_quantized": sum(sum(c.values()) for c in by_op.values()),
            "units_partial": dict(partial),
            "left_float": [{"op_type": op, "reason": r, "count": n}
                           for (op, r), n in sorted(float_reasons.items())],
            "input_tensor_bytes": tensor_bytes(source),
            "output_tensor_bytes": tensor_bytes(model),
            "seconds": round(total_seconds, 3),
            "calibration_seconds": round(calib_seconds, 3),
        },
        "units": [d.to_dict() for d in plan.units],
        "float_nodes": [f.__dict__ for f in plan.float_nodes],
        "inserted": inserted,
        "passes": [{"pass": n, "seconds": round(s, 4), "modified": m} for n, s, m in pass_times],
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def summary_text(report: dict, output_path: str = None, output_bytes: int = None) -> str:
    s = report["summary"]
    lines = [f"quantized {s['units_quantized']} units:"]
    for op, counts in s["quantized_by_op"].items():
        lines.append("  " + op + ": " + ", ".join(f"{n} {fmt}" for fmt, n in counts.items()))
    for status, n in s["units_partial"].items():
        lines.append(f"  ({n} of them {status})")
    if s["left_float"]:
        lines.append("left in float:")
        for item in s["left_float"][:12]:
            lines.append(f"  {item['count']} {item['op_type']}: {item['reason']}")
        if len(s["left_float"]) > 12:
            lines.append(f"  ... {len(s['left_float']) - 12} more reasons in the report")
    bn = report.get("bn_calibration")
    if bn is not None:
        lines.append(f"BatchNorm calibration corrected {len(bn['layers'])} layers in {bn['seconds']:.1f} s "
                     f"({bn['passes']} passes over the data"
                     + (f"; {bn['spill_peak_mb']:.0f} MB held on disk at most" if bn.get("spill_peak_mb") else "")
                     + ")")
    lines += _underflow_lines(report)
    size = f"weights {_mb(s['input_tensor_bytes'])} -> {_mb(s['output_tensor_bytes'])}"
    if output_bytes is not None:
        size += f", file {_mb(output_bytes)}"
    lines.append(size)
    lines.append(f"time {s['seconds']:.2f} s (calibration {s['calibration_seconds']:.2f} s)"
                 + (f"; wrote {output_path}" if output_path else ""))
    return "\n".join(lines)


def _underflow_lines(report: dict) -> list:
    """One line on activations that lose many values to underflow (fp8onnx.underflow)."""
    for key, verb in (("underflow_guard", "moved to"), ("underflow_advice", None)):
        info = report.get(key)
        if not info or not info["tensors"]:
            continue
        t = info["tensors"][0]
        worst = (f"{t['tensor']!r}: {100 * t['flush_rate']:.0f}% of its non-zero values in {t['format'].upper()}, "
                 f"{100 * t['fallback_flush_rate']:.0f}% in {info['fallback'].upper()}")
        n = len(info["tensors"])
        if verb:
            return [f"underflow guard {info['limit']:g}: {n} activation(s) {verb} {info['fallback'].upper()} "
                    f"(worst {worst})"]
        return [f"note: {n} activation(s) flush {100 * info['limit']:.0f}+ points more values to zero than "
                f"{info['fallback'].upper()} would (worst {worst}); --underflow-guard {info['limit']:g} "
                f"quantizes them in {info['fallback'].upper()}"]
    return []
