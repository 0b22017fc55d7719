"""The coverage study's report: the summary of the rows and its markdown. The headline
tables (fixed recipes, best of several per model, the peer) and their counts come from
coverage_tables.py; the cost section and the paper's Figures 4 and 5 (PNGs) from
coverage_plots.py.

Everything is recomputed from the rows of ``results.jsonl`` (one per model and
configuration, see coverage_worker.py): relative loss ``(m_fp32 - m_q) / m_fp32`` against
the model's FP32 row, "within 1%" as the paper counts it (loss <= 1%; a failed job
counts as not within), medians of cost ratios over models. The format columns are the
formats the rows hold (a configuration ``FORMAT-std[-bn]``; ``e3m4w.e4m3a-std`` is E3M4
weights with E4M3 activations), so a new format or mixed pair is a new column::

    >>> s = summarize(read_rows("docs/coverage/results.jsonl"))         # doctest: +SKIP
    >>> s["within"][("std", "")]["e4m3"], s["within"][("std", "")]["e3m4w.e4m3a"]   # doctest: +SKIP
    ((7, 11), (7, 11))
    >>> write_report(rows, Path("docs/coverage"))                        # doctest: +SKIP

Fixed recipes and best-of-several selections are counted apart (coverage_tables.py says why).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["THRESHOLD", "latest", "losses", "split_config", "format_label", "format_columns", "summarize",
           "render_markdown", "write_report", "is_fp8", "is_within", "config_name"]

_TOOLS = Path(__file__).resolve().parent

THRESHOLD = 0.01
FP8 = ("e5m2", "e4m3", "e3m4")
FORMATS = FP8 + ("int8",)
#: Untuned settings (scheme, suffix of the configuration name). ``-wmse``: least-error weight
#: scales (``weight_calib_method="mse"``), a fixed recipe like the others; its rows appear
#: only where a sweep ran one (results from before it read as they did).
WMSE_SETTINGS = (("std", "-wmse"), ("std", "-bn-wmse"), ("ext", "-wmse"), ("ext", "-bn-wmse"))
#: ``-kf``: the first weighted layer kept in float (``keep_first=True``); shown where run.
KF_SETTINGS = (("std", "-kf"), ("std", "-wmse-kf"), ("std", "-bn-kf"))
#: ``-ug``: the underflow guard (``underflow_guard=0.05``): activations that E3M4 flushes to
#: zero much more often than E4M3 get E4M3. Shown where run.
UG_SETTINGS = (("std", "-ug"), ("std", "-wmse-kf-ug"), ("std", "-bn-wmse-ug"), ("std", "-bn-wmse-kf-ug"))
#: ``-gq``: GPTQ weight rounding (``weight_rounding="gptq"``). Shown where run.
GQ_SETTINGS = (("std", "-gq"), ("std", "-wmse-gq-kf-ug"), ("std", "-bn-wmse-gq-ug"))
#: ``-ba``: BN calibration measured on the whole FP8 model (``bn_activations=True``). Shown where run.
BA_SETTINGS = (("std", "-ba"), ("std", "-ba-wmse"), ("std", "-ba-wmse-ug"))
SETTINGS = ((("std", ""), ("std", "-bn"), ("ext", ""), ("ext", "-bn")) + WMSE_SETTINGS + KF_SETTINGS + UG_SETTINGS
            + GQ_SETTINGS + BA_SETTINGS)
#: Accuracy-aware tuning (some nodes may fall back to float): reported apart from SETTINGS.
TUNED = ("std", "-tuned")
#: fp8onnx.tune's default FP8 search: its whole-recipe stage, then the stages of TUNED.
TUNED_RECIPES = ("std", "-tuned-recipes")
#: Power-of-two scales: a hardware constraint (scale as an exponent bias), shown beside the
#: others but outside SETTINGS, so it adds no chance to the best-of counts.
POW2 = ("std", "-pow2")
ALL_SETTINGS = SETTINGS + (POW2, TUNED, TUNED_RECIPES)
SETTING_NAMES = {("std", ""): "standard", ("std", "-bn"): "standard + BN calib",
                 ("ext", ""): "extended", ("ext", "-bn"): "extended + BN calib",
                 ("std", "-wmse"): "standard + MSE weight scales",
                 ("std", "-bn-wmse"): "standard + BN calib + MSE weight scales",
                 ("ext", "-wmse"): "extended + MSE weight scales",
                 ("ext", "-bn-wmse"): "extended + BN calib + MSE weight scales",
                 ("std", "-kf"): "standard, first layer float",
                 ("std", "-wmse-kf"): "standard + MSE weight scales, first layer float",
                 ("std", "-bn-kf"): "standard + BN calib, first layer float",
                 ("std", "-ug"): "standard, underflow guard",
                 ("std", "-wmse-kf-ug"): "standard + MSE weight scales, first layer float, underflow guard",
                 ("std", "-bn-wmse-ug"): "standard + BN calib + MSE weight scales, underflow guard",
                 ("std", "-bn-wmse-kf-ug"): "standard + BN calib + MSE weight scales, first layer float, underflow guard",
                 ("std", "-gq"): "standard + GPTQ weight rounding",
                 ("std", "-wmse-gq-kf-ug"): "standard + MSE weight scales + GPTQ rounding, first layer float, "
                                            "underflow guard",
                 ("std", "-bn-wmse-gq-ug"): "standard + BN calib + MSE weight scales + GPTQ rounding, underflow guard",
                 ("std", "-ba"): "standard + BN calib with FP8 activations",
                 ("std", "-ba-wmse"): "standard + BN calib with FP8 activations + MSE weight scales",
                 ("std", "-ba-wmse-ug"): "standard + BN calib with FP8 activations + MSE weight scales, "
                                         "underflow guard",
                 POW2: "standard, power-of-two scales",
                 TUNED: "standard + accuracy-aware tuning",
                 TUNED_RECIPES: "standard + tuning from whole recipes"}
_SUFFIXES = {f"{sch}{bn}": (sch, bn) for sch, bn in ALL_SETTINGS}
#: The library's default recipe (``fp8onnx.compile`` without options): the a priori choice.
DEFAULT = ("e4m3", ("std", ""))
PAPER = {"fp8": 0.9264, "int8": 0.6587}


def _sibling(name: str):
    """tools/<name>.py (coverage_plots: the cost section and figures; coverage_tables: the
    headline counts and tables), loaded by file path the way the tools load each other;
    imported on first use, since each imports this module."""
    import importlib.util

    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, _TOOLS / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        # The sibling calls back into this module: hand it this very module, however it was
        # loaded, rather than have each sibling load (maybe a second copy of) it by path.
        module.report = sys.modules[__name__]
    return sys.modules[key]


def _fp8_names() -> Tuple[tuple, tuple]:
    """(FP8 format names, every format name) from fp8onnx's format table."""
    from fp8onnx import formats

    return tuple(formats.FP8_NAMES), tuple(formats.names())


def split_config(config: str) -> Optional[Tuple[str, Tuple[str, str], tuple]]:
    """``"e3m4w.e4m3a-std-bn"`` -> ("e3m4w.e4m3a", ("e3m4", "e4m3"), ("std", "-bn"));
    ``"e4m3-ext"`` -> ("e4m3", ("e4m3", "e4m3"), ("ext", "")); None for fp32, peers and
    names of another shape (the naming is tools/coverage_study.py's ``config_names``)."""
    token, sep, rest = config.partition("-")
    setting = _SUFFIXES.get(rest)
    if not sep or setting is None:
        return None
    parts = token.split(".")
    if len(parts) == 1:
        return token, (token, token), setting
    if len(parts) == 2 and parts[0][-1:] == "w" and parts[1][-1:] == "a":
        return token, (parts[0][:-1], parts[1][:-1]), setting
    return None


def _pair(token: str) -> Tuple[str, str]:
    parts = token.split(".")
    return (token, token) if len(parts) == 1 else (parts[0][:-1], parts[1][:-1])


def format_label(token: str) -> str:
    """``e4m3`` -> ``E4M3``; ``e3m4w.e4m3a`` -> ``W E3M4 / A E4M3`` (weights / activations)."""
    w, a = _pair(token)
    return w.upper() if w == a else f"W {w.upper()} / A {a.upper()}"


def is_fp8(token: str) -> bool:
    """Every format of the token (``e4m3``, ``e3m4w.e4m3a``) is an FP8 format."""
    return all(f in _fp8_names()[0] for f in _pair(token))


def format_columns(configs) -> List[str]:
    """The format columns for these configuration names, in report order: E5M2, E4M3, E3M4
    (always), other FP8 formats, mixed FP8 pairs, INT8 (always), anything else. Tokens that
    name no format (a job given a bad format) get no column; their rows fail and are listed."""
    fp8, known = _fp8_names()
    tokens = {sc[0] for sc in map(split_config, configs) if sc and all(f in known for f in sc[1])}
    rank = {f: i for i, f in enumerate(FP8 + tuple(f for f in fp8 if f not in FP8))}
    others = sorted((t for t in tokens if t not in FORMATS),
                    key=lambda t: (not is_fp8(t), "." in t, [rank.get(f, 99) for f in _pair(t)], t))
    fp8_others = [t for t in others if is_fp8(t)]
    return list(FP8) + fp8_others + ["int8"] + [t for t in others if not is_fp8(t)]


def latest(rows: List[dict]) -> Dict[tuple, dict]:
    """The last row per (model, config): a resumed or retried job replaces its older row."""
    out = {}
    for r in rows:
        out[(r["model"], r["config"])] = r
    return out


def _ok(r: Optional[dict], key: str = "metric") -> bool:
    return bool(r) and r.get("status") == "ok" and r.get(key) is not None


def losses(rows: List[dict], *, metric_key: str = "metric") -> Dict[tuple, Optional[float]]:
    """Relative loss per (model, config) against that model's FP32 row; None = failed/missing."""
    by = latest(rows)
    out = {}
    for (model, config), r in by.items():
        if config == "fp32":
            continue
        ref = by.get((model, "fp32"))
        if not _ok(ref) or not _ok(r, metric_key) or ref["metric"] == 0:
            out[(model, config)] = None
            continue
        out[(model, config)] = (ref["metric"] - r[metric_key]) / ref["metric"]
    return out


def is_within(loss: Optional[float]) -> bool:
    """The paper's criterion: a relative loss of at most 1%; a failed job (None) is not within."""
    from fp8onnx.evaluation import within_loss

    return within_loss(loss, THRESHOLD)


def models_of(rows: List[dict]):
    """(evaluated models in first-seen order, {model: skip/failure status}) from the FP32 rows."""
    seen, skipped = [], {}
    for r in rows:
        if r["config"] != "fp32" or r["model"] in seen or r["model"] in skipped:
            continue
        if r.get("status") == "ok":
            seen.append(r["model"])
        else:
            skipped[r["model"]] = r.get("status")
    for m in list(skipped):
        if m in seen:
            skipped.pop(m)
    return seen, skipped


def config_name(token: str, setting: tuple) -> str:
    """(``e4m3``, (``std``, ``-bn``)) -> ``e4m3-std-bn``: split_config's inverse."""
    return f"{token}-{setting[0]}{setting[1]}"


def summarize(rows: List[dict]) -> dict:
    """Counts and medians the markdown shows (also what the tests recount); the within-1%
    counts, best-of selections and the peer's counts come from coverage_tables.py."""
    tables = _sibling("coverage_tables")
    by = latest(rows)
    models, skipped = models_of(list(by.values()))
    L = losses(list(by.values()))
    Ls = losses(list(by.values()), metric_key="metric_safe")
    n = len(models)
    ran = {c for (_, c) in by}
    formats = format_columns(ran)
    within, best, best_over = tables.within_counts(models, by, L, formats)
    selections = tables.selections(models, by, L, formats, ran)
    within.update(tables.best_of_everything(selections, n))
    peers = tables.peer_counts(models, L, Ls, ran)
    domains = {}
    for m in models:
        domains.setdefault(by[(m, "fp32")].get("domain") or "?", []).append(m)
    return {"models": models, "skipped": skipped, "loss": L, "loss_safe": Ls, "within": within,
            "best": best, "best_over": best_over, "formats": formats, "selections": selections,
            "peers": peers, "domains": domains, "rows": by}


def _short(text, n: int = 110) -> str:
    """A failure message for a table cell: no dir() listings, no pipes, at most n characters."""
    text = str(text).split(" in ['__class__")[0].replace("|", "/")
    return text if len(text) <= n else text[:n - 1] + "…"


def _pct(x: Optional[float]) -> str:
    return "failed" if x is None else f"{100 * x:.2f}%"


def _domain_trend(s: dict) -> List[str]:
    """Mean loss per domain and format (standard scheme, every model of the domain run) and
    which FP8 format is best per model (ties shared)."""
    cols = [f for f in s["formats"] if s["within"][("std", "")][f] is not None]
    fp8 = [f for f in cols if is_fp8(f)]
    lines = ["| domain | models | " + " | ".join(f"mean loss {format_label(f)}" for f in cols)
             + " | best FP8 (models, ties shared) |", "|---|---|" + "---|" * (len(cols) + 1)]
    trend = {}
    for dom, ms in sorted(s["domains"].items()):
        means, wins = {}, {f: 0.0 for f in fp8}
        for f in cols:
            vals = [s["loss"].get((m, f"{f}-std")) for m in ms]
            means[f] = None if any(v is None for v in vals) else statistics.mean(vals)
        for m in ms:
            vals = {f: s["loss"].get((m, f"{f}-std")) for f in fp8}
            vals = {f: v for f, v in vals.items() if v is not None}
            if vals:
                lo = min(vals.values())
                top = [f for f, v in vals.items() if abs(v - lo) <= 1e-9]
                for f in top:
                    wins[f] += 1 / len(top)
        trend[dom] = (means, wins)
        lines.append(f"| {dom} | {len(ms)} | " + " | ".join(_pct(means[f]) if means[f] is not None else "n/a"
                                                           for f in cols)
                     + " | " + ", ".join(f"{format_label(f)} {w:g}" for f, w in wins.items()) + " |")
    s["trend"] = trend
    return lines


def _notes(s: dict) -> List[str]:
    rows = [r for r in s["rows"].values() if r.get("status") == "ok"]
    calib = sorted({r.get("calib_samples") for r in rows if r.get("calib_samples")})
    via = sorted({r.get("bn_calib_via") for r in rows if r.get("bn_calib_via")})
    wmse = any("-wmse" in c for _, c in s["rows"])
    kf = any(c.endswith("-kf") for _, c in s["rows"])
    return [
        "How each configuration ran:\n",
        "- **ours**: `fp8onnx.compile_model(format=F, scheme=S, calib_method=\"max\", emit=\"emulate\"`"
        "[, BatchNorm calibration]`)`; a mixed column such as *W E3M4 / A E4M3* (configuration "
        "`e3m4w.e4m3a-std`) is `weight_format=\"e3m4\", activation_format=\"e4m3\"` instead of `format`: "
        "the paper's mixed FP8 formats. Weights per channel, activations per tensor, every format emitted as "
        "`ai.fp8onnx` custom ops and run by `fp8onnx.runtime.InferenceSession` (exact FP8 rounding on the CPU, "
        "E3M4 included; no onnxruntime Q/DQ rewrites involved)."
        + (" Settings *+ MSE weight scales* (configurations `FORMAT-SCHEME[-bn]-wmse`) add "
           "`weight_calib_method=\"mse\"`: each weight channel's threshold is the one of 51 from 0.5 to 1.0 "
           "times its amax with the least squared rounding error on the format's grid (max scaling where "
           "that is as good); with BatchNorm calibration the clipped weights are what it measures." if wmse else "")
        + (" Settings *first layer float* (configurations `...-kf`) add `keep_first=True`: the first "
           "weighted layer of the main graph (the one reading the raw input) stays in float, weights and "
           "input alike, as deployments keep a sensitive layer in FP16/BF16." if kf else "")
        + (f" BatchNorm calibration ran via: {', '.join(via)} (`api` = `compile_model(bn_calib=True)`; "
           "`pass` = the same BatchNormCalibration pass applied before `compile_model`, in rows from before "
           "the API wired it in)." if via else "")
        + " Zoo entries' deployment options apply to every compile (silero_vad: `fix_inputs={\"sr\": 16000}`, "
        "which inlines its If on the sample rate so calibration sees the network).",
        "- **peer**: onnxruntime `quantize_static` with `QuantType.QFLOAT8E4M3FN` weights and activations, "
        "QDQ, `CalibrationMethod.Distribution`; `peer` = no extra options (the documented call), `peer-sym` = "
        "`extra_options={\"ActivationSymmetric\": True}`. Each is scored in a default onnxruntime session "
        "and in one with `ReluQuantRewrite`, `WeightBiasQuantization`, `ClipQuantRewrite` disabled.",
        f"- calibration samples: {', '.join(map(str, calib)) or '—'} per model (the entry's calibration split); "
        "evaluation on the entry's held-out split, `n` in the per-model table. For agreement metrics one "
        "flipped sample of `n` is a loss of `1/n`, so models with `n < 100` cannot show a loss between 0 and 1/n.",
        "- each job runs in its own process, capped by `RLIMIT_AS`; a crash, timeout or out-of-memory is a "
        "failed row, counted as not within 1%.\n",
    ]


def _against_paper(s: dict) -> List[str]:
    w = s["within"]
    pct = lambda c: 100 * c[0] / c[1] if c and c[1] else float("nan")  # noqa: E731
    d_fmt, d_st = DEFAULT
    default, int8 = w[d_st].get(d_fmt), w[d_st].get("int8")
    sels = {x["label"]: x for x in s["selections"]}
    wide = sels.get("best of every untuned setting, mixed formats included") or sels.get(
        "best of every untuned setting, single formats only")
    L = ["## Against the paper\n"]
    text = (f"- Paper: FP8 {100 * PAPER['fp8']:.2f}% of models within 1% vs INT8 {100 * PAPER['int8']:.2f}%. "
            f"Here, fixed recipes: FP8 {format_label(d_fmt)} {SETTING_NAMES[d_st]} {pct(default):.1f}% vs INT8 "
            f"{SETTING_NAMES[d_st]} {pct(int8):.1f}%.")
    if wide and wide["fp8"] and wide["int8"]:
        af, ai = wide["fp8"], wide["int8"]
        text += (f" Best per model over every untuned setting (selection on the held-out split): FP8 "
                 f"{pct(af):.1f}% (among {len(wide['fp8_over'])}) vs INT8 {pct(ai):.1f}% (among "
                 f"{len(wide['int8_over'])}). "
                 + ("FP8 covers more models than INT8, as in the paper." if af[0] > ai[0] else
                    "FP8 does not cover more models than INT8 here, unlike the paper." if af[0] < ai[0] else
                    "FP8 and INT8 cover the same number of models here."))
    L.append(text)
    L.append("- Paper: E4M3 is the better format for NLP, E3M4 slightly better for CV. "
             "Mean relative loss (standard scheme, no BN calibration) and per-model best format by domain:\n")
    L += _domain_trend(s)
    L.append("")
    for dom, (means, wins) in sorted(s["trend"].items()):
        fp8_means = {f: v for f, v in means.items() if is_fp8(f) and v is not None}
        if fp8_means:
            lo = min(fp8_means, key=fp8_means.get)
            L.append(f"- {dom}: lowest mean loss {format_label(lo)} ({_pct(fp8_means[lo])}); "
                     f"{', '.join(f'{format_label(f)} {_pct(v)}' for f, v in fp8_means.items())}.")
    L.append("")
    return L


def _per_model(s: dict) -> List[str]:
    cols = s["formats"]
    L = ["## Per model: relative loss (lower is better; negative = better than FP32; bold = within 1%; "
         "— = not run; †n=K: scored on K held-out samples, not the model's current n)\n",
         "| model | domain/family | FP32 metric (eval n) | setting | " + " | ".join(format_label(f) for f in cols)
         + " | best FP8 |", "|---" * (len(cols) + 5) + "|"]
    for m in s["models"]:
        f32 = s["rows"][(m, "fp32")]
        first = True
        for st in ALL_SETTINGS:
            if not any((m, config_name(f, st)) in s["rows"] for f in cols):
                continue
            bf_, _ = s["best"][st].get(m, (None, None))
            head = (f"| {m} | {f32.get('domain')}/{f32.get('family')} | {f32['metric']:.4f} "
                    f"({f32.get('eval_samples')}) " if first else "| | | ")
            first = False
            cells = []
            for f in cols:
                r = s["rows"].get((m, config_name(f, st)))
                if r is None:
                    cells.append("—")  # not run (yet)
                    continue
                v = s["loss"].get((m, config_name(f, st)))
                cell = ("**" + _pct(v) + "**") if is_within(v) else _pct(v)
                if r.get("eval_samples") not in (None, f32.get("eval_samples")):
                    # scored on another held-out size than the model's current one (an older row)
                    cell += f" †n={r['eval_samples']}"
                t = r.get("tune")
                if t and t.get("weights_fp8_untuned") is not None:
                    kept = t["weights_fp8_untuned"] - t["weights_fp8"]
                    # the recipe a whole-recipe search chose: the column is only where it started
                    chose = f"{recipe_label(t['recipe'])}; " if t.get("recipe") else ""
                    cell += f" ({chose}{kept}/{t['weights_fp8_untuned']} w float)" if kept else f" ({chose}all FP8)"
                cells.append(cell)
            L.append(head + f"| {SETTING_NAMES[st]} | " + " | ".join(cells)
                     + f" | {format_label(bf_) if bf_ else '—'} |")
    return L


def recipe_label(recipe: dict) -> str:
    """A tuned row's chosen whole recipe in the table's words: ``{"weight_format": "e3m4",
    "activation_format": "e3m4", "weight_calib_method": "mse", "keep_first": True, ...}`` ->
    "E3M4 + MSE weight scales, first layer float"."""
    w, a = recipe["weight_format"], recipe["activation_format"]
    text = format_label(w if w == a else f"{w}w.{a}a")
    text += " + BN calib" if recipe.get("bn_calib") else ""
    text += " + MSE weight scales" if recipe.get("weight_calib_method") == "mse" else ""
    text += ", first layer float" if recipe.get("keep_first") else ""
    return text + (", underflow guard" if recipe.get("underflow_guard") else "")


def render_markdown(s: dict) -> str:
    n = len(s["models"])
    L = []
    L.append("# Coverage study: FP8 formats on the zoo, beside onnxruntime's FP8 quantizer\n")
    L.append(f"{n} models evaluated" + (f", {len(s['skipped'])} skipped" if s["skipped"] else "")
             + ". A model counts as *within 1%* when its task metric's relative loss against FP32, "
               "`(m_fp32 - m_q) / m_fp32`, is at most 1% (the paper's criterion); a failed job counts as not within.\n")
    L += _notes(s)
    L += _sibling("coverage_tables").headline(s)
    L += _against_paper(s)
    L += _per_model(s)
    for m, why in s["skipped"].items():
        L.append(f"| {m} | | | {why} |" + " |" * (len(s["formats"]) + 1))
    L.append("\nPeer per model (relative loss; default session / FP8-unsafe rewrites disabled):\n")
    L.append("| model | peer defaults | peer `ActivationSymmetric` |")
    L.append("|---|---|---|")
    for m in s["models"]:
        cells = []
        for cfg in ("peer", "peer-sym"):
            r = s["rows"].get((m, cfg))
            if r is None:
                cells.append("—")
            elif r.get("status") != "ok":
                cells.append(_short(r.get("status")))
            elif r.get("default_session_error") or r.get("safe_session_error"):
                cells.append(" / ".join(
                    "failed: " + _short(r[err]) if r.get(err) else _pct(src.get((m, cfg)))
                    for err, src in (("default_session_error", s["loss"]), ("safe_session_error", s["loss_safe"]))))
            else:
                cells.append(f"{_pct(s['loss'].get((m, cfg)))} / {_pct(s['loss_safe'].get((m, cfg)))}")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L += _sibling("coverage_plots").cost_section(s)
    failures = [r for r in s["rows"].values() if str(r.get("status", "")).startswith("failed")]
    if failures:
        L.append("## Failed jobs\n")
        for r in failures:
            L.append(f"- {r['model']} {r['config']}: {_short(r['status'], 300)}")
        L.append("")
    L.append("![relative loss per model and format](fig4_loss_per_model.png)\n")
    L.append("![relative loss against model size](fig5_loss_vs_size.png)\n")
    return "\n".join(L)


def write_report(rows: List[dict], out: Path) -> str:
    """Write ``coverage.md`` and the figures into ``out``; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(rows)
    text = render_markdown(s)
    (out / "coverage.md").write_text(text + "\n", encoding="utf-8")
    if s["models"]:
        _sibling("coverage_plots").write_plots(s, out)
    return text
