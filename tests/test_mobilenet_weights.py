"""MobileNetV2's FP8 weights against an independent reference, and its label details.

The coverage study found per-channel E4M3 *weights alone* cost MobileNetV2 a third of its
top-1 agreement with FP32 (docs/coverage/analysis.md). These tests pin down that the
compiler is not the cause: every weight, the 17 depthwise ``[C, 1, 3, 3]`` kernels
included, is quantized per output channel exactly as ml_dtypes rounds it (scale =
channel amax / 448, codes compared bit for bit), so the loss belongs to the model and the
format. They also check the entry's label accuracy against ImageNet classes.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from fp8onnx import zoo
from fp8onnx.api import compile_model

ml_dtypes = pytest.importorskip("ml_dtypes")


def _reference_codes(w: np.ndarray):
    """(E4M3 codes, scales) per output channel (axis 0), computed from the float weight only."""
    amax = np.abs(w.reshape(w.shape[0], -1)).max(1)
    scale = (amax / np.float32(448.0)).astype(np.float32)
    y = w / scale.reshape((-1,) + (1,) * (w.ndim - 1))
    return y.astype(ml_dtypes.float8_e4m3fn).view(np.uint8), scale


def test_e4m3_weights_are_ml_dtypes_per_channel_bit_for_bit(zoo_entry):
    e = zoo_entry("mobilenet_v2")
    fp32 = e.load()
    floats = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    groups = {n.input[1]: next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in fp32.graph.node if n.op_type == "Conv"}
    # dynamic activation scales: no calibration data needed, the weights are the same
    q = compile_model(fp32, format="e4m3", emit="qdq", dynamic=True).model
    inits = {i.name: i for i in q.graph.initializer}
    checked, depthwise = 0, 0
    for n in q.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        name = n.output[0][:-len("_dq")]
        w = floats[name]
        codes = numpy_helper.to_array(inits[n.input[0]])
        scale = numpy_helper.to_array(inits[n.input[1]])
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if w.ndim == 2:  # the classifier's Gemm (transB=1): per output row as well
            assert axis == 0
        else:
            assert axis == 0 and codes.shape == w.shape
        want_codes, want_scale = _reference_codes(w)
        assert np.array_equal(scale.view(np.uint32), want_scale.view(np.uint32)), name
        assert np.array_equal(codes.view(np.uint8), want_codes), name
        checked += 1
        depthwise += groups.get(name, 1) == w.shape[0] and w.shape[1] == 1
    assert checked == 53 and depthwise == 17


def test_label_accuracy_counts_imagenet_classes(zoo_entry):
    e = zoo_entry("mobilenet_v2")
    e.evaluate()
    fp32 = dict(e.last_details)
    assert fp32["labelled"] == 50  # astronaut.png shows no ImageNet class
    assert 0.6 <= fp32["label_top1"] <= fp32["label_top5"] <= 1.0

    class Shifted:  # logits moved by 500 classes: no label set survives
        def __init__(self, model):
            self.s = zoo.ort_session(model)

        def run(self, names, feeds):
            return [np.roll(o, 500, axis=1) for o in self.s.run(names, feeds)]

    e.evaluate(session_factory=Shifted)
    assert e.last_details["label_top1"] <= 0.05 and e.last_details["labelled"] == 50
