"""The recipe: every choice a compilation makes, as one JSON-serialisable record.

Global formats, scheme, emission and calibration settings, plus overrides per op type
and per node name (regular expressions, searched in the anchor node's name). An override
is a format name for both weights and activations, ``{"weight": F, "activation": F}``,
or ``"float"`` to keep the unit out. Node overrides beat op-type overrides, which beat
the global formats. The recipe is stored in the output's ``metadata_props``.

>>> r = Recipe.from_dict({"format": "e4m3", "op_types": {"Gemm": "e3m4"},
...                       "nodes": {"classifier": "float"}})
>>> r.resolve("features.0/Conv", "Conv")
('e4m3', 'e4m3', None)
>>> r.resolve("classifier/Gemm", "Gemm")[2]
"recipe keeps nodes matching 'classifier' in float"
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Tuple

from . import formats as _formats
from . import schemes as _schemes
from .errors import UserError

__all__ = ["Recipe", "EMIT_MODES", "CALIB_METHODS", "WEIGHT_CALIB_METHODS", "WEIGHT_ROUNDINGS", "BN_MODES"]

EMIT_MODES = ("auto", "qdq", "emulate")
CALIB_METHODS = ("max", "percentile", "mse", "kl")
#: Weight scale per channel: max (amax, the paper) or mse (threshold of least rounding error).
WEIGHT_CALIB_METHODS = ("max", "mse")
#: How weights meet the grid of that scale: nearest, or gptq, which rounds so that the
#: layer's *outputs* on the calibration data move least (fp8onnx.calibration.gptq).
WEIGHT_ROUNDINGS = ("nearest", "gptq")
#: match: move kept BN statistics by what FP8 weights change (default; measured best on
#: PP-OCR); reestimate: the paper's re-estimation from the calibration data.
BN_MODES = ("match", "reestimate")
#: Recipe fields that are switches.
_BOOL_FIELDS = ("keep_first_last", "keep_first", "dynamic", "bn_calib", "bn_activations", "saturate",
                "pow2_scales")


@dataclass
class Recipe:
    weight_format: str = "e4m3"
    activation_format: str = "e4m3"
    scheme: str = "standard"
    emit: str = "auto"
    calib_method: str = "max"
    percentile: float = 99.99
    weight_calib_method: str = "max"
    weight_rounding: str = "nearest"
    exclude: List[str] = field(default_factory=list)
    keep_first_last: bool = False
    #: Only the first weighted layer in float: the one that reads the raw input (an image's
    #: 8-bit pixels lose most under a 3-4 bit mantissa, and edge kernels cancel).
    keep_first: bool = False
    op_types: Dict[str, object] = field(default_factory=dict)
    nodes: Dict[str, object] = field(default_factory=dict)
    dynamic: bool = False
    bn_calib: bool = False
    bn_mode: str = "match"
    #: BN calibration measures the FP8 model with its activations fake-quantized too (at the
    #: scales the output will hold), so its corrections also remove the channel shifts that
    #: activation rounding causes through the nonlinearities; off, it sees FP8 weights only
    #: (the paper's recipe).
    bn_activations: bool = False
    opset: int = 19
    saturate: bool = True
    #: Scales rounded up to powers of two (hardware that takes the scale as an exponent
    #: bias, such as Intel Gaudi's FP8 units, needs them).
    pow2_scales: bool = False
    #: Activations whose calibration values the activation format (E3M4) flushes to zero
    #: at a rate this much above E4M3's get E4M3 (0: off); see fp8onnx.underflow.
    underflow_guard: float = 0.0
    #: Inputs made constants before compiling (``{"sr": 16000}``): Ifs on them get inlined.
    fix_inputs: Dict[str, object] = field(default_factory=dict)

    # --- construction and validation ------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        if "format" in d:
            fmt = d.pop("format")
            d.setdefault("weight_format", fmt)
            d.setdefault("activation_format", fmt)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"recipe has unknown key(s) {', '.join(unknown)}: valid keys are format, {', '.join(sorted(known))}"
            )
        r = cls(**d)
        r.validate()
        return r

    @classmethod
    def load(cls, path: str) -> "Recipe":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError as e:
            raise UserError(f"recipe file {path!r} not found: check the --recipe path") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"recipe file {path!r} is not valid JSON ({e}): fix the file") from e
        if not isinstance(d, dict):
            raise UserError(f"recipe file {path!r} must hold a JSON object, not {type(d).__name__}")
        return cls.from_dict(d)

    def validate(self) -> None:
        for key in ("weight_format", "activation_format"):
            _check_format(getattr(self, key), key)
        if self.scheme not in _schemes.names():
            raise UserError(f"unknown scheme {self.scheme!r}: choose one of {', '.join(_schemes.names())}")
        if self.emit not in EMIT_MODES:
            raise UserError(f"unknown emit mode {self.emit!r}: choose one of {', '.join(EMIT_MODES)}")
        if self.calib_method not in CALIB_METHODS:
            raise UserError(
                f"unknown calibration method {self.calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
        if self.weight_calib_method not in WEIGHT_CALIB_METHODS:
            raise UserError(f"unknown weight calibration method {self.weight_calib_method!r}: "
                            f"choose one of {', '.join(WEIGHT_CALIB_METHODS)}")
        if self.bn_mode not in BN_MODES:
            raise UserError(f"unknown BatchNorm calibration mode {self.bn_mode!r}: choose one of {', '.join(BN_MODES)}")
        guard = self.underflow_guard
        if isinstance(guard, bool) or not isinstance(guard, (int, float)) or not 0.0 <= guard < 1.0:
            raise UserError(f"underflow guard {guard!r} is not a fraction in [0, 1): give e.g. 0.05 "
                            "(5 points more values flushed to zero than in E4M3), or 0 for off")
        self.underflow_guard = float(guard)
        if self.underflow_guard and self.dynamic:
            raise UserError("the underflow guard reads calibration statistics, which --dynamic does not "
                            "collect: drop --underflow-guard or --dynamic")
        if not 0 < float(self.percentile) <= 100:
            raise UserError(f"percentile {self.percentile} is outside (0, 100]: give e.g. 99.99")
        for key in _BOOL_FIELDS:
            value = getattr(self, key)
            # JSON's "false" (a string) would read as true: take bools, numpy bools and 0/1 only.
            if not (isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
                    or (isinstance(value, int) and value in (0, 1))):
                raise UserError(f"recipe key {key!r} must be true or false, not {value!r}: fix the recipe")
            setattr(self, key, bool(value))
        if self.bn_activations and not self.bn_calib:
            raise UserError("--bn-activations is a setting of BatchNorm calibration: add --bn-calib "
                            "(or drop --bn-activations)")
        if self.bn_activations and self.dynamic:
            raise UserError("--bn-activations needs the activation scales before BN calibration, which "
                            "--dynamic only computes at run time: drop --bn-activations or --dynamic")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise UserError(f"unknown weight rounding {self.weight_rounding!r}: choose one of "
                            f"{', '.join(WEIGHT_ROUNDINGS)}")
        if self.weight_rounding == "gptq" and self.pow2_scales:
            raise UserError("--weight-rounding gptq rounds onto each weight's own scale, which power-of-two "
                            "scales move: drop --pow2-scales or use --weight-rounding nearest")
        if not isinstance(self.opset, int) or not 19 <= self.opset <= 23:
            raise UserError(f"opset {self.opset!r} is not supported: FP8 Q/DQ needs 19..23")
        for pattern in list(self.exclude) + list(self.nodes):
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(f"bad node-name regex {pattern!r} ({e}): fix the pattern") from e
        _check_fix_inputs(self.fix_inputs)
        for where, table in (("op_types", self.op_types), ("nodes", self.nodes)):
            for key, value in table.items():
                _parse_override(value, f"{where}[{key!r}]")

    # --- decisions --------------------------------------------------------------------
    def resolve(self, node_name: str, op_type: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
        """(weight format, activation format, reason kept float) for one unit's anchor node."""
        for pattern in self.exclude:
            if re.search(pattern, node_name):
                return None, None, f"excluded by --exclude {pattern!r}"
        w, a = self.weight_format, self.activation_format
        if op_type in self.op_types:
            w, a = _parse_override(self.op_types[op_type], op_type, (w, a))
            if w is None and a is None:
                return None, None, f"recipe keeps op type {op_type} in float"
        for pattern, value in self.nodes.items():
            if re.search(pattern, node_name):
                w, a = _parse_override(value, pattern, (w, a))
                if w is None and a is None:
                    return None, None, f"recipe keeps nodes matching {pattern!r} in float"
        return w, a, None

    # --- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _check_fix_inputs(table) -> None:
    if not isinstance(table, dict):
        raise UserError(f"fix_inputs must map input names to values, not {type(table).__name__}: "
                        'give e.g. {"sr": 16000}')
    for name, value in table.items():
        if not isinstance(name, str) or not name:
            raise UserError(f"fix_inputs: input name {name!r} is not a non-empty string: give e.g. {{\"sr\": 16000}}")
        if not _plain_value(value):
            raise UserError(f"fix_inputs[{name!r}] = {value!r} is not a number, a bool or a (nested) list of them: "
                            f"give e.g. {name}=16000 or {name}=1,2,3")


def _plain_value(value) -> bool:
    """JSON-representable numbers and bools, or non-empty nested lists of them."""
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(_plain_value(v) for v in value)
    return False


def _check_format(name, where):
    try:
        _formats.get(name)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from e


def _parse_override(value, where, current=(None, None)) -> Tuple[Optional[str], Optional[str]]:
    """(weight, activation) formats an override gives; keys it omits keep ``current``."""
    if value == "float":
        return None, None
    if isinstance(value, str):
        _check_format(value, where)
        return value, value
    if isinstance(value, dict):
        bad = set(value) - {"weight", "activation"}
        if bad:
            raise UserError(f"override {where}: unknown key(s) {sorted(bad)}; use 'weight' and 'activation'")
        out = []
        for k, cur in zip(("weight", "activation"), current):
            v = value.get(k, cur)
            if v in (None, "float"):
                out.append(None)
            else:
                _check_format(v, f"{where}.{k}")
                out.append(v)
        return out[0], out[1]
    raise UserError(f"override {where} must be a format name, 'float' or {{'weight': F, 'activation': F}}")
