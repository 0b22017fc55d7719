"""Helpers shared by the preparation-pass tests: tiny models, ORT runs, idempotence."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(nodes, inputs, outputs, inits=(), opset=19, ir_version=9, extra_opsets=()):
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = ir_version
    return m


def run(model, feeds):
    """Outputs of ``model`` on ``feeds`` with onnxruntime CPU, graph optimisations off."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same_outputs(a, b, feeds, atol=0.0):
    ra, rb = run(a, feeds), run(b, feeds)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def apply_twice(pass_, model):
    """Runs ``pass_`` on a copy of ``model``; checks a second run reports no change and
    leaves identical bytes. Returns (original, result of the first run, modified)."""
    original = copy.deepcopy(model)
    first = pass_(model)
    assert first.model is model
    snapshot = model.SerializeToString()
    second = pass_(model)
    assert second.modified is False, f"{pass_.name} modified the model on its second run"
    assert model.SerializeToString() == snapshot
    return original, model, first.modified


def check(model):
    onnx.checker.check_model(model, full_check=True)
