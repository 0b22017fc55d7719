"""Folding constant ai.fp8onnx nodes: bit-identical results, model untouched, errors kept."""
import doctest
import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from fp8onnx import formats
from fp8onnx.runtime import InferenceSession, OrtUserError, ops
from fp8onnx.runtime.fold import fold_constant_ops

RNG = np.random.default_rng(11)
W = (RNG.standard_normal((6, 5)) * 3).astype(np.float32)
WS = (np.abs(W).max(0) / 30).astype(np.float32)  # per output column, axis 1


def weight_model(weight_op="fq", scale=WS, share=False):
    """y = MatMul(x, op(W)) (+ x @ W when ``share``): op is FakeQuant or Dequantize of codes."""
    inits = [numpy_helper.from_array(scale, "ws")]
    if weight_op == "fq":
        inits.append(numpy_helper.from_array(W, "w"))
        nodes = [ops.make_fake_quant_node("w", "ws", "wq", format="e3m4", axis=1, name="wfq")]
    else:
        codes = formats.get("e3m4").quantize(W, WS, axis=1)
        inits.append(numpy_helper.from_array(codes, "w"))
        nodes = [ops.make_dequantize_node("w", "ws", "wq", format="e3m4", axis=1, name="wdq")]
    nodes.append(helper.make_node("MatMul", ["x", "wq"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, [None, 5])]
    if share:
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", T.FLOAT, [None, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [None, 6])],
                              outputs, inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])


@pytest.mark.parametrize("weight_op", ["fq", "dq"])
def test_folding_is_bit_identical_and_leaves_the_model_alone(weight_op):
    model = weight_model(weight_op)
    before = model.SerializeToString()
    folded, n = fold_constant_ops(model)
    assert n == 1 and model.SerializeToString() == before
    assert not any(node.domain == ops.DOMAIN for node in folded.graph.node)
    assert {t.name for t in folded.graph.initializer} == {"wq"}  # w and ws are unused now
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    a = InferenceSession(model).run(None, {"x": x})[0]
    b = InferenceSession(model, fold_constants=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(a, b)
    wq = formats.get("e3m4").fake_quant(W, WS, axis=1)
    np.testing.assert_array_equal(numpy_helper.to_array(folded.graph.initializer[-1]), wq)


def test_shared_initializer_is_kept():
    folded, n = fold_constant_ops(weight_model(share=True))
    assert n == 1 and {t.name for t in folded.graph.initializer} == {"w", "wq"}
    onnx.checker.check_model(folded)


def test_invalid_nodes_are_not_folded_and_still_fail_with_the_node_name(tmp_path):
    model = weight_model(scale=np.zeros_like(WS))
    _, n = fold_constant_ops(model)
    assert n == 0
    sess = InferenceSession(model)
    with pytest.raises(OrtUserError, match="node 'wfq'.*positive and finite"):
        sess.run(None, {"x": np.ones((1, 6), np.float32)})


def test_folding_from_a_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(weight_model(), path)
    x = np.ones((2, 6), np.float32)
    np.testing.assert_array_equal(InferenceSession(path).run(None, {"x": x})[0],
                                  InferenceSession(str(path), fold_constants=False).run(None, {"x": x})[0])


@pytest.mark.parametrize("name", ["ops", "session", "fold", "_capi"])
def test_docstring_examples_run(name):
    module = importlib.import_module(f"fp8onnx.runtime.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
