"""The underflow guard: activations that a narrow-range format would flush to zero get E4M3.

E3M4 buys a mantissa bit with range: with the scale mapping a tensor's amax to 30, every
|x| below amax/3840 becomes zero, where E4M3 keeps values down to amax/458752. Most
activations do not reach that far below their maximum. A few do: a power spectrum
spanning five decades (Resemblyzer's LSTM input, 76% of its values flushed in E3M4
against 37% in E4M3), or hard-swish outputs near zero (PicoDet). A higher local SQNR
hides this, because SQNR weighs the large values.

With ``Recipe.underflow_guard = g`` (``--underflow-guard g``), an activation tensor whose
non-zero calibration values would flush to zero in its unit's format at a rate at least
``g`` above E4M3's rate is quantized in E4M3 instead, in every unit that reads it, and
each such unit says so in its notes. Rates come from the calibration statistics'
per-binade counts (:meth:`~fp8onnx.calibration.TensorStats.fraction_below`), at the
thresholds the recipe's range method gives each format, so no extra pass over the data.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

from . import calibration as _calib
from . import formats as _formats

__all__ = ["FALLBACK", "ADVICE_LIMIT", "flush_rate", "guard_underflow", "guard_notes", "underflow_advice"]

log = logging.getLogger(__name__)

#: The format a guarded tensor falls back to: E4M3 has ONNX's FP8 type and 119x E3M4's
#: range below the maximum, for one mantissa bit less.
FALLBACK = "e4m3"
#: The margin the compiler's advice uses when the guard is off, as the study's -ug settings
#: do: from 0.02 to 0.10 the zoo's count stayed the same (docs/coverage/analysis.md).
ADVICE_LIMIT = 0.05


def flush_rate(stats, fmt, method: str = "max", percentile: float = 99.99, amax=None) -> float:
    """Fraction of the non-zero calibration values of ``stats`` that ``fmt`` rounds to zero,
    with the scale ``method`` picks, or ``amax`` if given (values below half the smallest
    subnormal step)."""
    fmt = _formats.get(fmt)
    if amax is None:
        amax = _calib.choose_amax(stats, method, fmt, percentile=percentile)
    return stats.fraction_below(fmt.zero_below(amax / fmt.max))


def _narrower(fmt) -> bool:
    """A float format whose range below max is narrower than the fallback's."""
    f, g = _formats.get(fmt), _formats.get(FALLBACK)
    return f.is_float and f.max / f.min_subnormal < g.max / g.min_subnormal


def _rates(plan, stats, recipe, ranges: Dict[tuple, float]) -> Dict[tuple, tuple]:
    """(own flush rate, fallback's flush rate) per (activation tensor, narrow format) of the
    plan; the clipping thresholds it picks go into ``ranges`` by (tensor, format), so the
    compiler's activation ranges reuse them (kl and mse searches cost milliseconds each)."""

    def rate(tensor, st, fmt):
        key = (tensor, fmt)
        if key not in ranges:
            ranges[key] = float(_calib.choose_amax(st, recipe.calib_method, _formats.get(fmt),
                                                   percentile=recipe.percentile))
        return flush_rate(st, fmt, amax=ranges[key])

    rates = {}
    for d in plan.units:
        fmt = d.activation_format
        if not fmt or not _narrower(fmt):
            continue
        for use in d.activation_uses:
            st = stats.get(use.tensor)
            if st is None or st.missing or not st.nonzero_count or (use.tensor, fmt) in rates:
                continue
            rates[(use.tensor, fmt)] = (rate(use.tensor, st, fmt), rate(use.tensor, st, FALLBACK))
    return rates


def _records(plan, hits_by_key: Dict[tuple, tuple]) -> List[dict]:
    records: Dict[tuple, dict] = {}
    for d in plan.units:
        for u in d.activation_uses:
            key = (u.tensor, d.activation_format)
            if key in hits_by_key:
                own, fallback = hits_by_key[key]
                rec = records.setdefault(key, {"tensor": u.tensor, "format": key[1], "flush_rate": round(own, 4),
                                               "fallback_flush_rate": round(fallback, 4), "units": []})
                if d.unit not in rec["units"]:
                    rec["units"].append(d.unit)
    return sorted(records.values(), key=lambda r: (r["fallback_flush_rate"] - r["flush_rate"], r["tensor"]))


def underflow_advice(plan, stats, recipe, limit: float = ADVICE_LIMIT,
                     ranges: Optional[dict] = None) -> List[dict]:
    """What the guard at ``limit`` would move, worst first, changing nothing: the compiler
    reports it when the guard is off, so the user learns of the underflow before deploying.
    ``ranges``: see :func:`guard_underflow`."""
    rates = _rates(plan, stats, recipe, {} if ranges is None else ranges)
    return _records(plan, {k: r for k, r in rates.items() if r[0] - r[1] >= limit})


def guard_underflow(plan, stats: Dict[str, object], recipe, ranges: Optional[dict] = None) -> List[dict]:
    """Move the activations of ``plan``'s units to E4M3 where the guard says so (in place);
    returns one record per guarded tensor, worst first: tensor, format, both flush rates
    and the units moved. ``ranges`` (a dict) receives the clipping threshold of every
    (tensor, format) it looked at, for the compiler to reuse."""
    limit = float(recipe.underflow_guard)
    if limit <= 0.0:
        return []
    rates = _rates(plan, stats, recipe, {} if ranges is None else ranges)
    guarded = {k: r for k, r in rates.items() if r[0] - r[1] >= limit}
    records = _records(plan, guarded)
    for d in plan.units:
        fmt = d.activation_format
        hits = [(u.tensor, guarded[(u.tensor, fmt)]) for u in d.activation_uses if (u.tensor, fmt) in guarded]
        if not hits:
            continue
        worst_tensor, (own, fallback) = max(hits, key=lambda h: h[1][0] - h[1][1])
        d.notes.append(f"activations in {FALLBACK.upper()} (underflow guard {limit:g}): "
                       f"{100 * own:.1f}% of {worst_tensor!r}'s non-zero calibration values flush to zero "
                       f"in {fmt.upper()}, {100 * fallback:.1f}% in {FALLBACK.upper()}")
        d.activation_format = FALLBACK
    if records:
        log.info("underflow guard: %d activation tensors in %s", len(records), FALLBACK)
    return records


def guard_notes(records: List[dict], limit: float) -> Dict[tuple, str]:
    """(tensor, FALLBACK) -> why it is in E4M3, from :func:`guard_underflow`'s records: the
    sentence the inserted nodes' doc strings carry, so Netron shows it."""
    return {(r["tensor"], FALLBACK): (f"{FALLBACK.upper()} by the underflow guard {limit:g}: {r['format'].upper()} "
                                      f"would flush {100 * r['flush_rate']:.1f}% of its non-zero calibration values "
                                      f"to zero, {FALLBACK.upper()} {100 * r['fallback_flush_rate']:.1f}%")
            for r in records}
