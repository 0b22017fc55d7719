"""FakeQuant on ONNX Runtime's blocked NCHWc tensors: same bits, fewer reorders.

The reference is the same model in the same runtime without the rewrite
(``blocked_fake_quant=False``), whose FakeQuant is itself tested bit for bit against
onnxruntime's QuantizeLinear->DequantizeLinear in test_runtime.py.
"""
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import fp8onnx
from fp8onnx import formats, kernels
from fp8onnx.runtime import InferenceSession, ops
from fp8onnx.runtime.layout import NCHWC_DOMAIN, fake_quant_in_blocked_layout, may_reorder_fake_quants

RNG = np.random.default_rng(5)


def conv_chain(fmt="e3m4", act_axis_scale=False, fq_output_too=False, saturate=True):
    """x(1,16,12,12) -> [FQ -> Conv 16->32 -> Relu] -> [FQ -> Conv 32->32] -> [FQ -> Conv 32->16] -> y.

    ``act_axis_scale``: the second activation FakeQuant is per channel (must stay in
    NCHW). ``fq_output_too``: the second FakeQuant's output is also a graph output (a
    plain consumer, so a ReorderOutput must follow the moved FakeQuant).
    """
    chans = [16, 32, 32, 16]
    nodes, inits = [], []
    src = "x"
    for i in range(3):
        w = (RNG.standard_normal((chans[i + 1], chans[i], 3, 3)) * 0.2).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        if i == 1 and act_axis_scale:
            scale = np.linspace(0.01, 0.05, chans[i]).astype(np.float32)
        else:
            scale = np.array(0.05, np.float32)
        inits.append(numpy_helper.from_array(scale, f"s{i}"))
        nodes.append(ops.make_fake_quant_node(src, f"s{i}", f"a{i}", format=fmt, name=f"fq{i}",
                                              saturate=saturate))
        nodes.append(helper.make_node("Conv", [f"a{i}", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        out = "y" if i == 2 else f"r{i}"
        nodes.append(helper.make_node("Relu" if i == 0 else "Sigmoid", [f"c{i}"], [out]))
        src = out
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, None)]
    if fq_output_too:
        outputs.append(helper.make_tensor_value_info("a1", T.FLOAT, None))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", T.FLOAT, [1, 16, 12, 12])],
                              outputs, inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])


def _machine_uses_nchwc():
    """Whether onnxruntime here rewrites Conv into the NCHWc layout (x86 with AVX2 and up)."""
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [1, 16, 4, 4])],
                          [helper.make_tensor_value_info("y", T.FLOAT, None)],
                          [numpy_helper.from_array(np.ones((16, 16, 1, 1), np.float32), "w")])
    m = helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 21)])
    so = ort.SessionOptions()
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = os.path.join(d, "o.onnx")
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return any(n.domain == NCHWC_DOMAIN for n in onnx.load(so.optimized_model_filepath).graph.node)


needs_nchwc = pytest.mark.skipif(not _machine_uses_nchwc(), reason="onnxruntime uses no NCHWc layout on this CPU")


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@needs_nchwc
@pytest.mark.parametrize("fmt", ["e3m4", "e4m3", "e5m2", "int8"])
def test_conv_chain_moves_the_fake_quants_and_keeps_every_bit(fmt):
    model = conv_chain(fmt)
    x = (RNG.standard_normal((1, 16, 12, 12)) * 3).astype(np.float32)
    blocked = InferenceSession(model)
    plain = InferenceSession(model, blocked_fake_quant=False)
    assert blocked.blocked_fake_quants == 2 and plain.blocked_fake_quants == 0  # fq0 reads x
    assert _same(blocked.run(None, {"x": x}), plain.run(None, {"x": x}))


@needs_nchwc
def test_per_channel_or_non_saturating_stay_in_nchw_and_plain_consumers_get_a_reorder():
    x = (RNG.standard_normal((1, 16, 12, 12)) * 3).astype(np.float32)
    cases = ((conv_chain(act_axis_scale=True), 1), (conv_chain(fq_output_too=True), 2),
             # without saturation padding channels could turn NaN: only INT8 moves
             (conv_chain("e4m3", saturate=False), 0), (conv_chain("int8", saturate=False), 2))
    for model, moved in cases:
        blocked = InferenceSession(model)
        plain = InferenceSession(model, blocked_fake_quant=False)
        assert blocked.blocked_fake_quants == moved
        assert _same(blocked.run(None, {"x": x}), plain.run(None, {"x": x}))


@needs_nchwc
def test_rewrite_shape_on_onnxruntime_optimized_graph(tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    InferenceSession(conv_chain(fq_output_too=True), so, blocked_fake_quant=False)
    optimized = onnx.load(so.optimized_model_filepath)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    before = (count(optimized, "ReorderInput"), count(optimized, "ReorderOutput"))
    rewritten, moved = fake_quant_in_blocked_layout(optimized)
    assert moved == 2
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    for n in rewritten.graph.node:
        if n.op_type == ops.FAKE_QUANT and n.name != "fq0":
            assert producers[n.input[0]].domain == NCHWC_DOMAIN  # reads the blocked conv output
    after = (count(rewritten, "ReorderInput"), count(rewritten, "ReorderOutput"))
    assert after[0] == before[0] - 2 and after[1] == before[1] - 1  # a1 is a graph output
    assert fake_quant_in_blocked_layout(rewritten)[1] == 0  # nothing left to move


def test_rewrite_leaves_graphs_without_the_pattern_alone():
    model = conv_chain()
    before = model.SerializeToString()
    assert fake_quant_in_blocked_layout(model)[1] == 0  # not optimized: no Reorder nodes
    assert model.SerializeToString() == before
    assert may_reorder_fake_quants(model)


def test_options_that_turn_the_rewrite_off():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    x = (RNG.standard_normal((1, 16, 12, 12))).astype(np.float32)
    model = conv_chain()
    ext = InferenceSession(model, so)
    assert ext.blocked_fake_quants == 0
    assert _same(ext.run(None, {"x": x}), InferenceSession(model, so, blocked_fake_quant=False).run(None, {"x": x}))


@pytest.mark.parametrize("fmt,axis", [("e3m4", None), ("e4m3", 1), ("e5m2", None), ("int8", 1)])
def test_fake_quant_that_may_run_in_place_matches_the_kernels(fmt, axis):
    """Relu -> FakeQuant -> Neg: onnxruntime may write the FakeQuant's output over the
    Relu's (the op declares MayInplace), which must not change a bit."""
    x = (RNG.standard_normal((3, 5, 4096)) * 40).astype(np.float32)
    scale = np.array(0.7, np.float32) if axis is None else np.linspace(0.1, 2, 5).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             ops.make_fake_quant_node("a", "s", "b", format=fmt, axis=1),
             helper.make_node("Neg", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", T.FLOAT, list(x.shape))],
                              [numpy_helper.from_array(scale, "s")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])
    y = InferenceSession(model).run(None, {"x": x})[0]
    ref = -kernels.fake_quant(formats.get(fmt), np.maximum(x, 0), scale.reshape(()) if axis is None else scale,
                              axis=axis)
    assert np.array_equal(y, ref, equal_nan=True)


def _relu_fq_model(x_shape, extra_reader=False):
    """x -> Relu -> a -> FakeQuant(e3m4) -> b -> Neg -> y (and a -> Abs -> z if extra_reader)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             ops.make_fake_quant_node("a", "s", "b", format="e3m4", name="fq"),
             helper.make_node("Neg", ["b"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", T.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Abs", ["a"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", T.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, x_shape)],
                              outputs, [numpy_helper.from_array(np.array(0.25, np.float32), "s")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])


def test_fake_quant_output_shape_is_inferred_so_it_can_run_in_place():
    """onnxruntime only writes an output over an input (MayInplace) when it knows both
    shapes are equal: the ops infer their output shape from their input, symbolic dims
    included. The graph output y (declared without a shape) gets it through Neg."""
    sess = InferenceSession(_relu_fq_model(["batch", 7, 300]))
    assert sess.get_outputs()[0].shape == ["batch", 7, 300]
    x = (RNG.standard_normal((2, 7, 300)) * 3).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    assert np.array_equal(y, -kernels.fake_quant("e3m4", np.maximum(x, 0), np.float32(0.25)))


@pytest.mark.parametrize("x_shape", [None, ["n", None], []])
def test_fake_quant_with_unknown_or_scalar_shapes(x_shape):
    """Unknown rank, an unnamed unknown dim and a scalar: nothing is inferred that could
    be wrong (onnxruntime would write an unnamed dim as -1), and the values are right."""
    x = np.array(2.3, np.float32) if x_shape == [] else (RNG.standard_normal((3, 5)) * 3).astype(np.float32)
    y = InferenceSession(_relu_fq_model(x_shape)).run(None, {"x": x})[0]
    assert np.array_equal(y, -kernels.fake_quant("e3m4", np.maximum(x, 0), np.float32(0.25)))


def test_fake_quant_does_not_overwrite_an_input_another_node_reads():
    x = (RNG.standard_normal((4, 1000)) * 3).astype(np.float32)
    y, z = InferenceSession(_relu_fq_model([4, 1000], extra_reader=True)).run(None, {"x": x})
    assert np.array_equal(z, np.maximum(x, 0))
    assert np.array_equal(y, -kernels.fake_quant("e3m4", np.maximum(x, 0), np.float32(0.25)))


@needs_nchwc
@pytest.mark.parametrize("name,fmt", [("digits_cnn", "e3m4"), ("ppocr_cls", "e3m4"), ("ppocr_cls", "e4m3")])
def test_real_models_same_outputs_with_fewer_reorders(zoo_entry, name, fmt):
    e = zoo_entry(name)
    q = fp8onnx.compile_model(e.load(), format=fmt, calibration=list(e.calib_feeds(8)), emit="emulate").model
    blocked = InferenceSession(q)
    plain = InferenceSession(q, blocked_fake_quant=False)
    assert blocked.blocked_fake_quants >= 2
    for feed in e.eval_feeds(4):
        assert _same(blocked.run(None, feed), plain.run(None, feed))


@needs_nchwc
def test_paths_bytes_and_a_failing_rewrite(tmp_path, monkeypatch):
    import fp8onnx.runtime.layout as layout

    model = conv_chain()
    x = (RNG.standard_normal((1, 16, 12, 12))).astype(np.float32)
    ref = InferenceSession(model, blocked_fake_quant=False).run(None, {"x": x})
    onnx.save(model, tmp_path / "m.onnx")
    for source in (str(tmp_path / "m.onnx"), model.SerializeToString()):
        sess = InferenceSession(source)
        assert sess.blocked_fake_quants == 2 and _same(sess.run(None, {"x": x}), ref)

    def broken(m):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(layout, "fake_quant_in_blocked_layout", broken)
    sess = InferenceSession(model)  # falls back to the usual session
    assert sess.blocked_fake_quants == 0 and _same(sess.run(None, {"x": x}), ref)


def test_models_without_conv_skip_the_second_optimization():
    """A MatMul model with activation FakeQuants: onnxruntime blocks no layout there."""
    nodes = [ops.make_fake_quant_node("x", "s", "xq", format="e4m3"), helper.make_node("MatMul", ["xq", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", T.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])
    assert not may_reorder_fake_quants(model) and may_reorder_fake_quants(conv_chain())
