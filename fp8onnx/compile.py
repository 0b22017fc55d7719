"""``python -m fp8onnx.compile INPUT.onnx -o OUTPUT.onnx [options]``: a thin shell over the API.

Exit codes: 0 success, 2 bad input or usage (one ``error: ...`` line naming the problem
and the fix; ``--debug`` shows the traceback), 1 an internal failure. The output file
appears only when everything succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import formats as _formats
from . import schemes as _schemes
from .cli import Parser, callable_module, check_positive, run_main, write_text_atomic
from .errors import UserError
from .recipe import BN_MODES, CALIB_METHODS, EMIT_MODES, WEIGHT_CALIB_METHODS, WEIGHT_ROUNDINGS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    fmts = list(_formats.names())
    p = Parser(prog="python -m fp8onnx.compile",
                description="Quantize an FP32 ONNX model to FP8 (E4M3, E5M2, E3M4, FNUZ) or INT8.")
    p.add_argument("input", help="FP32 ONNX model")
    p.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    p.add_argument("--format", choices=fmts, help="format of weights and activations (default e4m3)")
    p.add_argument("--weight-format", choices=fmts, help="format of weights (mixed formats)")
    p.add_argument("--activation-format", choices=fmts, help="format of activations (mixed formats)")
    p.add_argument("--scheme", choices=list(_schemes.names()), help="operator scheme (default standard)")
    p.add_argument("--calib", help="calibration data: data.npz, a directory of .npz feeds, or 'random'")
    p.add_argument("--samples", type=int, help="use at most N calibration samples")
    p.add_argument("--batch-size", type=int, default=1, help="samples per run for .npz data (default 1)")
    p.add_argument("--calib-method", choices=list(CALIB_METHODS), help="activation range method (default max)")
    p.add_argument("--percentile", type=float, help="percentile for --calib-method percentile (default 99.99)")
    p.add_argument("--weight-calib", choices=list(WEIGHT_CALIB_METHODS),
                   help="weight scale per channel: max (amax, default) or mse (least rounding error)")
    p.add_argument("--weight-rounding", choices=list(WEIGHT_ROUNDINGS),
                   help="weights onto that scale's grid: nearest (default) or gptq (the rounding that "
                        "moves each layer's outputs on the calibration data least)")
    p.add_argument("--underflow-guard", type=float, metavar="G",
                   help="quantize in E4M3 any activation whose calibration values the activation format "
                        "(E3M4) flushes to zero at a rate G above E4M3's, e.g. 0.05 (default 0: off)")
    p.add_argument("--calib-cache", help="save statistics here and reuse them on the next compile")
    p.add_argument("--bn-calib", action="store_true", default=None,
                   help="BatchNorm calibration: re-estimate BN statistics (or correct folded-BN channel "
                        "scale and bias) under FP8 weights, on the calibration data")
    p.add_argument("--bn-mode", choices=list(BN_MODES),
                   help="kept BatchNorms: match (shift the statistics by what FP8 weights change, default) "
                        "or reestimate (the paper: statistics of the calibration data)")
    p.add_argument("--bn-activations", action="store_true", default=None,
                   help="with --bn-calib: measure with activations quantized too (scales taken first), so "
                        "the corrections also remove the shifts activation rounding causes")
    p.add_argument("--dynamic", action="store_true", default=None,
                   help="activation scales from each tensor's amax at run time (no calibration data needed)")
    p.add_argument("--emit", choices=list(EMIT_MODES),
                   help="auto: ONNX Q/DQ where ONNX has the type, fp8onnx ops otherwise (default)")
    p.add_argument("--exclude", nargs="+", metavar="REGEX", help="keep nodes whose name matches in float")
    p.add_argument("--keep-first-last", action="store_true", default=None,
                   help="keep the first and last weighted layers in float")
    p.add_argument("--keep-first", action="store_true", default=None,
                   help="keep only the first weighted layer (the one reading the raw input) in float")
    p.add_argument("--pow2-scales", action="store_true", default=None,
                   help="round every scale up to a power of two (hardware that takes the scale as an "
                        "exponent bias, e.g. Intel Gaudi)")
    p.add_argument("--fix-input", action="append", type=parse_fix_input, metavar="NAME=VALUE",
                   help="make input NAME a constant (VALUE: int, float, true/false or a comma list); "
                        "Ifs on it are inlined so their contents get quantized; repeatable")
    p.add_argument("--recipe", help="recipe JSON (per-op-type and per-node overrides); options given here win")
    p.add_argument("--report", help="write the JSON report of every decision here")
    p.add_argument("--opset", type=int, help="target opset (default 19, the first with FP8 Q/DQ)")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="store weights in OUTPUT.data beside the model (automatic above 2 GB)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks, log every pass, dump the model after each pass next to OUTPUT")
    return p


def parse_fix_input(text: str):
    """``NAME=VALUE`` -> (NAME, value): int, float, true/false, or a comma list of those."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE: write e.g. --fix-input sr=16000")
    items = [_parse_scalar(v.strip(), text) for v in value.split(",")]
    return name, items if "," in value else items[0]


def _parse_scalar(v: str, text: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r}: {v!r} is not an int, a float or true/false: "
                                     "write e.g. --fix-input sr=16000")


def main(argv=None) -> int:
    return run_main(build_parser(), _run, argv)


def _run(args) -> int:
    from . import api, modelio
    from .report import summary_text

    check_positive(samples=args.samples, batch_size=args.batch_size)
    modelio.check_output_path(args.output, input_path=args.input)
    if args.report:
        modelio.check_output_path(args.report, input_path=args.input)
    options = dict(
        format=args.format, weight_format=args.weight_format, activation_format=args.activation_format,
        scheme=args.scheme, emit=args.emit, calib_method=args.calib_method, percentile=args.percentile,
        weight_calib_method=args.weight_calib,
        weight_rounding=args.weight_rounding,
        exclude=args.exclude, keep_first_last=args.keep_first_last, keep_first=args.keep_first,
        pow2_scales=args.pow2_scales, opset=args.opset, dynamic=args.dynamic,
        bn_calib=args.bn_calib, bn_mode=args.bn_mode, bn_activations=args.bn_activations,
        underflow_guard=args.underflow_guard,
    )
    fix_inputs = None
    if args.fix_input:
        fix_inputs = dict(args.fix_input)
        if len(fix_inputs) != len(args.fix_input):
            names = [n for n, _ in args.fix_input]
            twice = sorted({n for n in names if names.count(n) > 1})
            raise UserError(f"--fix-input gives {', '.join(twice)} more than once: give each input once")
    dump_dir = os.path.splitext(args.output)[0] + "_passes" if args.debug else None
    result = api.compile_model(args.input, recipe=args.recipe, calibration=args.calib, samples=args.samples,
                               batch_size=args.batch_size, calib_cache=args.calib_cache, dump_dir=dump_dir,
                               fix_inputs=fix_inputs, **options)
    modelio.save_model(result.model, args.output, external_data=args.external_data, input_path=args.input)
    if args.report:
        _write_json(args.report, result.report)
    print(summary_text(result.report, args.output, _file_bytes(args.output)))
    return 0


def _file_bytes(path: str) -> int:
    total = os.path.getsize(path)
    data = path + ".data"
    return total + (os.path.getsize(data) if os.path.exists(data) else 0)


def _write_json(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


def _api_compile(*args, **kwargs):
    from .api import compile as _compile

    return _compile(*args, **kwargs)


callable_module(__name__, _api_compile)


if __name__ == "__main__":
    sys.exit(main())
