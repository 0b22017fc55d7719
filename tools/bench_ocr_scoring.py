"""tools/bench_ocr_calib.py's OCR scoring: full OCR of the held-out pages with one detector,
and the figures the report takes from it.

The pages, the OCR itself (rapidocr's DB post-processing, crops, FP32 PP-OCRv4 rec) and the
line-by-line comparison are tools/ocr_pipeline.py's; this module picks the session a
detector runs in and reduces the results. Only stdlib and numpy are imported at load (the
benchmark's child processes load it too); onnx, onnxruntime and fp8onnx on first use.
"""
from __future__ import annotations

import numpy as np

__all__ = ["session", "evaluate", "char_acc", "agree"]


def session(path: str, *, safe: bool):
    """onnxruntime for native models, fp8onnx's session when ai.fp8onnx ops are present;
    ``safe`` turns onnxruntime's FP8-unsafe rewrites off (``zoo.ORT_FP8_UNSAFE``)."""
    import onnx
    import onnxruntime as ort

    from fp8onnx.zoo import ORT_FP8_UNSAFE

    custom = any(op.domain == "ai.fp8onnx" for op in onnx.load(path, load_external_data=False).opset_import)
    disabled = list(ORT_FP8_UNSAFE) if safe else []
    if custom:
        from fp8onnx.runtime import InferenceSession

        return InferenceSession(path, disabled_optimizers=disabled)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def evaluate(path, pages, ocr, *, safe: bool, boxes_from=None, offset=(0, 0)) -> dict:
    """OCR of every page with the detector at ``path`` (``ocr``: an ocr_pipeline.PageOcr);
    ``boxes_from`` (a function page -> boxes) bypasses the detector; ``offset``: how far the
    pages were shifted, so the comparison moves the boxes back."""
    sess = session(path, safe=safe)
    results = [ocr.read(sess, p, boxes=None if boxes_from is None else boxes_from(i, p))
               for i, p in enumerate(pages)]
    return {"results": results, "lines": [t for r in results for t in r.lines],
            "boxes": sum(r.boxes for r in results), "stray": sum(r.stray for r in results),
            "offset": offset}


def char_acc(pred, truth) -> float:
    """Mean character accuracy (1 - edit distance / length) of the lines against the truth."""
    from fp8onnx.zoo.ocr import char_accuracy

    return float(np.mean([char_accuracy(p, t) for p, t in zip(pred, truth)]))


def agree(ev, fp32) -> float:
    """Share of lines an evaluation reads exactly as the FP32 detector's evaluation does."""
    return float(np.mean([a == b for a, b in zip(ev["lines"], fp32["lines"])]))
