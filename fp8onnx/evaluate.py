"""How close is the FP8 model to its FP32 source? ``fp8onnx.evaluate`` and its CLI.

Python::

    import fp8onnx
    from fp8onnx.evaluate import PerSample
    q = fp8onnx.compile("models/digits_cnn.onnx", calibration="models/data/digits_calib.npz")
    accuracy = PerSample(lambda out, t: out["logits"].argmax(1) == t["label"])
    r = fp8onnx.evaluate("models/digits_cnn.onnx", q, "models/data/digits_test.npz",
                         metric=accuracy, batch_size=50)
    print(r.summary_text()); r.save_html("report.html"); r.save_json("report.json")

Command line::

    python -m fp8onnx.evaluate FLOAT.onnx FP8.onnx --data DATA [--samples N] [--batch-size B]
        [--report REPORT.html] [--json REPORT.json] [--annotate OUT.onnx] [--ort-qdq] [--debug]

A model with native FP8 QuantizeLinear/DequantizeLinear is evaluated as a copy rewritten
to fp8onnx's fused kernels (``fp8onnx.passes.EmulateQDQ``): the same bits as onnxruntime's
own Q/DQ kernels, about 2x faster. ``--ort-qdq`` (Python: ``session_factory=
functools.partial(session_for, ort_qdq=True)``, or ``FP8ONNX_ORT_QDQ=1``) runs
onnxruntime's own kernels instead.

What is measured (all streamed over the samples, in bounded memory):

* per model output: cosine similarity and SQNR (dB) over all elements of all samples,
  max abs error, and top-1 agreement for class scores: float outputs of rank 2 or 3
  whose last dim is > 1 and that a Softmax/LogSoftmax/Sigmoid or a Gemm/MatMul/Conv
  layer makes (through reshapes or a bias Add), so detection heads (Concat) and
  embeddings get no meaningless "agreement" (see ``EvalResult.top1_rule``);
* the task metric, if given, on both models, and the relative loss
  ``(m_fp32 - m_fp8) / |m_fp32|`` (higher is better). Two forms:
  ``metric(outputs, targets) -> float`` gets the lists (one item per feed) of output
  dicts and target dicts of one model and is called once per model (it holds the final
  outputs of all samples, for metrics such as mAP); ``PerSample(fn)`` calls
  ``fn(outputs, targets)`` per feed for per-sample scores and averages them, holding
  nothing. Targets are the data's arrays that are not model inputs (a ``label`` array
  in the ``.npz``, extra keys in feed dicts);
* per quantized tensor (worst SQNR first): SQNR against the float model (accumulated
  error), the local SQNR of its own Q/DQ, saturation and underflow rates, observed and
  calibrated amax, and a log2 histogram of its values; weights from their initializers.

``data`` takes every form calibration data does (.npz, a directory of .npz feeds,
``"random"``, an iterable of feed dicts, a CalibrationDataReader). Exit codes as for
``fp8onnx.compile``: 2 with one ``error:`` line for bad input, and no output file.
"""
from __future__ import annotations

import argparse
import functools
import sys

from .cli import Parser, callable_module, check_positive, run_main, write_text_atomic
from .errors import UserError
from .evaluation import (EvalResult, LayerFigures, OutputFidelity, PerSample, evaluate, session_for,
                         tensor_map)

__all__ = ["evaluate", "EvalResult", "LayerFigures", "OutputFidelity", "PerSample", "session_for",
           "tensor_map", "main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m fp8onnx.evaluate",
                description="Compare an FP8 model with its FP32 source: output fidelity and per-layer SQNR.")
    p.add_argument("float_model", help="the FP32 ONNX model")
    p.add_argument("fp8_model", help="the FP8 model compiled from it")
    p.add_argument("--data", required=True,
                   help="evaluation data: data.npz (non-input arrays such as 'label' are ignored here), "
                        "a directory of .npz feeds, or 'random'")
    p.add_argument("--samples", type=int, help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=1, help="samples per run for .npz data (default 1)")
    p.add_argument("--report", help="write the HTML report here (needs matplotlib)")
    p.add_argument("--json", help="write the JSON report here")
    p.add_argument("--annotate", help="write the FP8 model here with its figures in the nodes' doc strings")
    p.add_argument("--top", type=int, default=6, help="histograms of the N worst tensors in the HTML (default 6)")
    p.add_argument("--ort-qdq", action="store_true",
                   help="run native FP8 Q/DQ on onnxruntime's own kernels instead of fp8onnx's fused, "
                        "bit-identical ones (slower; also FP8ONNX_ORT_QDQ=1)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and log progress")
    return p


def main(argv=None) -> int:
    return run_main(build_parser(), _run, argv)


def _run(args) -> int:
    from . import modelio
    from .evaluation import html

    check_positive(samples=args.samples, batch_size=args.batch_size)
    outputs = [p for p in (args.report, args.json, args.annotate) if p]
    if len(set(outputs)) < len(outputs):
        raise UserError("--report, --json and --annotate must be different files")
    for path in outputs:
        for src in (args.float_model, args.fp8_model):
            modelio.check_output_path(path, input_path=src)
    if args.report:
        html._plt()  # fail now, not after the evaluation, when matplotlib is missing
    fp8 = modelio.load_model(args.fp8_model)
    factory = functools.partial(session_for, ort_qdq=True) if args.ort_qdq else None
    result = evaluate(args.float_model, fp8, args.data, samples=args.samples, batch_size=args.batch_size,
                      session_factory=factory)
    # Render everything first, then write: a failure leaves no partial set of files.
    page = html.render_html(result, top=args.top, title=f"fp8onnx: {args.fp8_model} vs {args.float_model}") \
        if args.report else None
    annotated = result.annotate(fp8) if args.annotate else None
    if args.json:
        result.save_json(args.json)
    if page is not None:
        write_text_atomic(args.report, page)
    if annotated is not None:
        modelio.save_model(annotated, args.annotate, input_path=args.fp8_model)
    print(result.summary_text())
    return 0


callable_module(__name__, evaluate)


if __name__ == "__main__":
    sys.exit(main())
