"""fp8onnx.runtime custom ops against independent references.

- FakeQuant and Quantize/Dequantize bit-exact against onnxruntime's own
  QuantizeLinear -> DequantizeLinear (opset 21) for every format ONNX has, per tensor and
  per axis, saturate on and off, on special values (+-0, subnormals, ties, overflow,
  NaN, +-Inf) and random data of many magnitudes;
- E3M4 (no ONNX type) against a brute-force decoder of all 256 codes;
- every format against fp8onnx.kernels (the same arithmetic through its wrapper);
- a graph mixing FakeQuant with Conv/Relu/MatMul against the same graph in native QDQ,
  and a MatMul graph against numpy.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

from fp8onnx import formats
from fp8onnx.runtime import InferenceSession, ops

NATIVE = [n for n in formats.names() if formats.get(n).onnx_type is not None]


def _model(nodes, inputs, outputs, inits=(), opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset),
                                                   ops.opset_import()])


def _vi(name, elem=T.FLOAT):
    return helper.make_tensor_value_info(name, elem, None)


def custom_session(op, fmt, axis=1, saturate=1):
    """A session running one ai.fp8onnx op on inputs x and scale."""
    node = helper.make_node(op, ["x", "scale"], ["y"], domain=ops.DOMAIN, format=fmt, axis=axis,
                            **({} if op == ops.DEQUANTIZE else {"saturate": saturate}))
    in_type = T.UINT8 if op == ops.DEQUANTIZE else T.FLOAT
    out_type = T.UINT8 if op == ops.QUANTIZE else T.FLOAT
    return InferenceSession(_model([node], [_vi("x", in_type), _vi("scale")], [_vi("y", out_type)]))


def native_qdq_session(fmt, axis, channels, saturate):
    """onnxruntime's own QuantizeLinear -> DequantizeLinear for ``fmt`` (zero point 0)."""
    fmt = formats.get(fmt)
    shape = [] if axis is None else [channels]
    zp = helper.make_tensor("zp", fmt.onnx_type, shape, bytes(int(np.prod(shape or [1]))), raw=True)
    qa = {} if axis is None else {"axis": axis}
    da = dict(qa)
    if fmt.is_float:
        qa["saturate"] = int(saturate)
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **qa),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], **da)]
    graph = helper.make_graph(nodes, "qdq", [_vi("x"), _vi("scale")], [_vi("y")], [zp])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def special_values(fmt):
    """Values on, between and beyond the format's grid, as multiples of the scale."""
    f = formats.get(fmt)
    grid = [0.0, f.min_subnormal, f.min_subnormal / 2, f.min_subnormal * 1.5, f.min_normal,
            f.min_normal * 0.75, f.max, f.max * 1.02, f.max * 1.2, f.max * 4, 1.0, 1.0625, 1.125,
            1.1875, 2.5, 3.5, 0.5, 127.5, 128.5, -0.0, np.inf, -np.inf, np.nan, 1e-30, 3e38]
    vals = np.array(grid, np.float32)
    rng = np.random.default_rng(1)
    rand = (rng.standard_normal(4000) * np.exp2(rng.uniform(-14, 14, 4000))).astype(np.float32)
    return np.concatenate([vals, -vals, rand]).astype(np.float32)


def assert_same_bits(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bad = np.flatnonzero(got.view(np.uint32)[~nan] != want.view(np.uint32)[~nan])
    assert bad.size == 0, f"{bad.size} differ, e.g. got {got[~nan][bad[:5]]} want {want[~nan][bad[:5]]}"


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("fmt", NATIVE)
def test_fake_quant_per_tensor_matches_onnxruntime_qdq(fmt, saturate):
    x = special_values(fmt)
    for scale in (np.float32(1.0), np.float32(0.0371)):
        want = native_qdq_session(fmt, None, None, saturate).run(None, {"x": x, "scale": np.asarray(scale)})[0]
        got = custom_session(ops.FAKE_QUANT, fmt, saturate=saturate).run(None, {"x": x, "scale": scale})[0]
        assert_same_bits(got, want)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("fmt", NATIVE)
def test_fake_quant_per_axis_matches_onnxruntime_qdq(fmt, axis):
    x = special_values(fmt)[: 4 * 6 * 50].reshape(4, 6, 50)
    channels = x.shape[axis]
    scale = np.linspace(0.02, 3.0, channels).astype(np.float32)
    for saturate in (1, 0):
        want = native_qdq_session(fmt, axis, channels, saturate).run(None, {"x": x, "scale": scale})[0]
        got = custom_session(ops.FAKE_QUANT, fmt, axis=axis, saturate=saturate).run(
            None, {"x": x, "scale": scale})[0]
        assert_same_bits(got, want)


@pytest.mark.parametrize("fmt", NATIVE)
def test_quantize_then_dequantize_ops_match_onnxruntime(fmt):
    x = special_values(fmt)[:3000].reshape(3, 1000)
    scale = np.array([0.5, 1.0, 0.07], np.float32)
    codes = custom_session(ops.QUANTIZE, fmt, axis=0).run(None, {"x": x, "scale": scale})[0]
    assert codes.dtype == np.uint8
    got = custom_session(ops.DEQUANTIZE, fmt, axis=0).run(None, {"x": codes, "scale": scale})[0]
    want = native_qdq_session(fmt, 0, 3, 1).run(None, {"x": x, "scale": scale})[0]
    assert_same_bits(got, want)


def e3m4_values():
    """Brute force: the float value of each of the 256 E3M4 codes (bias 3, S.111.1111 NaN)."""
    vals = np.empty(256, np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e, m = (code >> 4) & 0x7, code & 0xF
        if e == 7 and m == 15:
            vals[code] = np.nan
        elif e == 0:
            vals[code] = sign * m / 16 * 2.0 ** (1 - 3)
        else:
            vals[code] = sign * (1 + m / 16) * 2.0 ** (e - 3)
    return vals


def e3m4_fake_quant_reference(x, scale):
    """Nearest finite E3M4 value of x / scale (ties to the even code), saturating, times scale."""
    vals = e3m4_values()
    codes = np.flatnonzero(~np.isnan(vals))
    finite = vals[codes]
    out = np.empty_like(x)
    for i, v in enumerate(x):
        y = np.float32(v / scale)
        if np.isnan(y):
            out[i] = np.nan
            continue
        y = float(np.clip(y, -30.0, 30.0))
        d = np.abs(finite - y)
        best = codes[d == d.min()]
        best = best[best % 2 == 0] if best.size > 1 else best
        code = best[0]
        if vals[code] == 0 and np.signbit(y):
            code = 0x80  # -0 keeps its sign
        out[i] = np.float32(vals[code]) * scale
    return out


def test_e3m4_fake_quant_matches_brute_force():
    rng = np.random.default_rng(3)
    grid = np.abs(e3m4_values()[:127])
    mids = (grid[:-1] + grid[1:]) / 2  # the ties
    x = np.concatenate([grid, mids, -mids, [0.0, -0.0, 31.0, 45.0, -1e9, np.inf, -np.inf, np.nan],
                        rng.uniform(-35, 35, 1500)]).astype(np.float32)
    for scale in (np.float32(1.0), np.float32(0.25)):
        xs = (x * scale).astype(np.float32)
        got = custom_session(ops.FAKE_QUANT, "e3m4").run(None, {"x": xs, "scale": scale})[0]
        assert_same_bits(got, e3m4_fake_quant_reference(xs, scale))


@pytest.mark.parametrize("fmt", formats.names())
def test_ops_match_fp8onnx_kernels(fmt):
    f = formats.get(fmt)
    x = special_values(fmt)[:2 * 5 * 40].reshape(2, 5, 40)
    scale = np.linspace(0.1, 2.0, 5).astype(np.float32)
    for saturate in (True, False):
        got = custom_session(ops.FAKE_QUANT, fmt, saturate=int(saturate)).run(
            None, {"x": x, "scale": scale})[0]
        assert_same_bits(got, f.fake_quant(x, scale, axis=1, saturate=saturate))
        got = custom_session(ops.FAKE_QUANT, fmt, saturate=int(saturate)).run(
            None, {"x": x, "scale": scale[2]})[0]
        assert_same_bits(got, f.fake_quant(x, scale[2], saturate=saturate))
    codes = f.quantize(x, scale, axis=1)
    assert_same_bits(custom_session(ops.DEQUANTIZE, fmt).run(
        None, {"x": codes.view(np.uint8), "scale": scale})[0], f.dequantize(codes, scale, axis=1))
    got = custom_session(ops.QUANTIZE, fmt).run(None, {"x": x, "scale": scale})[0]
    np.testing.assert_array_equal(got, codes.view(np.uint8))


def test_empty_tensor_runs():
    out = custom_session(ops.FAKE_QUANT, "e4m3").run(
        None, {"x": np.zeros((0, 3), np.float32), "scale": np.float32(1)})[0]
    assert out.shape == (0, 3)


def _conv_model(qdq):
    """x -> Conv(FQ(W) per out-channel) -> Relu -> FQ -> Flatten -> MatMul(FQ(W2) axis 1)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((4 * 6 * 6, 10)).astype(np.float32) * 0.1
    ws = (np.abs(w).reshape(4, -1).max(1) / 448).astype(np.float32)
    w2s = (np.abs(w2).max(0) / 448).astype(np.float32)
    inits = [helper.make_tensor("w", T.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("w2", T.FLOAT, w2.shape, w2.ravel()),
             helper.make_tensor("ws", T.FLOAT, ws.shape, ws),
             helper.make_tensor("w2s", T.FLOAT, w2s.shape, w2s),
             helper.make_tensor("as", T.FLOAT, [], [0.01])]

    def fq(src, scale, dst, axis):
        if not qdq:
            return [ops.make_fake_quant_node(src, scale, dst, format="e4m3", axis=axis)]
        n = int(np.prod(next(i for i in inits if i.name == scale).dims or [1]))
        shape = [] if scale == "as" else [n]
        inits.append(helper.make_tensor(scale + "_zp", T.FLOAT8E4M3FN, shape, bytes(n), raw=True))
        a = {} if scale == "as" else {"axis": axis}
        return [helper.make_node("QuantizeLinear", [src, scale, scale + "_zp"], [dst + "_q"], **a),
                helper.make_node("DequantizeLinear", [dst + "_q", scale, scale + "_zp"], [dst], **a)]

    nodes = (fq("w", "ws", "wq", 0) + [helper.make_node("Conv", ["x", "wq"], ["c"]),
                                       helper.make_node("Relu", ["c"], ["r"])]
             + fq("r", "as", "rq", 1) + [helper.make_node("Flatten", ["rq"], ["f"])]
             + fq("w2", "w2s", "w2q", 1) + [helper.make_node("MatMul", ["f", "w2q"], ["y"])])
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [2, 10])], inits)


@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
def test_graph_mixing_fake_quant_with_conv_matmul_matches_native_qdq(level):
    model = _conv_model(qdq=False)
    ops.register_onnx_schemas()
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    got = InferenceSession(model, so).run(["y"], {"x": x})[0]
    # The reference is the unoptimised native graph: at ORT_ENABLE_EXTENDED and above,
    # onnxruntime 1.32 removes the Relu in front of a float8 QuantizeLinear (a fusion
    # that is only valid for unsigned integer types), so its optimised QDQ graph is not
    # the model's semantics. ai.fp8onnx ops are opaque to those fusions.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    native = ort.InferenceSession(_conv_model(qdq=True).SerializeToString(), so,
                                  providers=["CPUExecutionProvider"])
    want = native.run(["y"], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (2, 10) and np.abs(got).max() > 0.1


def test_matmul_graph_matches_numpy():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    nodes = [ops.make_fake_quant_node("x", "s", "xq", format="e5m2"),
             helper.make_node("MatMul", ["xq", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    inits = [helper.make_tensor("w", T.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("b", T.FLOAT, b.shape, b), helper.make_tensor("s", T.FLOAT, [], [0.01])]
    sess = InferenceSession(_model(nodes, [_vi("x")], [_vi("y")], inits))
    xq = native_qdq_session("e5m2", None, None, 1).run(None, {"x": x, "scale": np.array(0.01, np.float32)})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], xq @ w + b, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(xq, x)  # the fake-quant did change the input


def test_checker_accepts_models_with_the_custom_domain_and_schemas_catch_bad_attributes():
    ops.register_onnx_schemas()
    io = [helper.make_tensor_value_info(n, T.FLOAT, [2, 3]) for n in ("x", "y")]
    s = helper.make_tensor_value_info("s", T.FLOAT, [])
    node = helper.make_node(ops.FAKE_QUANT, ["x", "s"], ["y"], domain=ops.DOMAIN, format="e4m3",
                            axis="zero")  # axis must be an int
    with pytest.raises(onnx.checker.ValidationError, match="axis"):
        onnx.checker.check_model(_model([node], [io[0], s], [io[1]]), full_check=True)
    codes = helper.make_tensor_value_info("x", T.UINT8, [2, 3])
    good = _model([ops.make_dequantize_node("x", "s", "y", format="e3m4")], [codes, s], [io[1]])
    onnx.checker.check_model(good, full_check=True)
    wrong_type = _model([ops.make_dequantize_node("x", "s", "y", format="e3m4")], [io[0], s], [io[1]])
    with pytest.raises(Exception, match="(?i)type"):
        onnx.checker.check_model(wrong_type, full_check=True)


def test_node_builders_validate_format():
    with pytest.raises(ValueError, match="unknown format 'e9m9'"):
        ops.make_fake_quant_node("x", "s", "y", format="e9m9")
    node = ops.make_quantize_node("x", "s", "y", format="E4M3", saturate=False, name="q")
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == {
        "format": b"e4m3", "axis": 1, "saturate": 0}


@pytest.mark.parametrize("shape, axis", [((300_001,), None), ((5, 3, 30_000), 1),
                                         ((1, 40, 5_000), 1), ((70_000, 3), -1)])
def test_chunked_multithreaded_runs_match_the_kernels(shape, axis):
    """Large inputs are cut into chunks for ONNX Runtime's thread pool; every op, every cut."""
    f = formats.get("e5m2")
    x = (np.random.default_rng(8).standard_normal(shape) * 100).astype(np.float32)
    scale = np.float32(0.3) if axis is None else np.linspace(0.1, 2, shape[axis]).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2

    def run(op, inp, in_type, out_type):
        node = helper.make_node(op, ["x", "scale"], ["y"], domain=ops.DOMAIN, format="e5m2",
                                axis=1 if axis is None else axis)
        m = _model([node], [_vi("x", in_type), _vi("scale")], [_vi("y", out_type)])
        return InferenceSession(m, so).run(None, {"x": inp, "scale": scale})[0]

    assert_same_bits(run(ops.FAKE_QUANT, x, T.FLOAT, T.FLOAT), f.fake_quant(x, scale, axis=axis))
    codes = f.quantize(x, scale, axis=axis)
    np.testing.assert_array_equal(run(ops.QUANTIZE, x, T.FLOAT, T.UINT8), codes)
    assert_same_bits(run(ops.DEQUANTIZE, codes, T.UINT8, T.FLOAT), f.dequantize(codes, scale, axis=axis))


def test_onnxruntime_fp8_unsafe_rewrites_are_off_by_default():
    """Native FP8 QDQ (Relu -> QuantizeLinear) in our session at the default level gives the
    unoptimised graph's result; onnxruntime 1.32's ReluQuantRewrite drops the Relu."""
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    native = _conv_model(qdq=True)
    want = ort.InferenceSession(native.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(InferenceSession(native).run(None, {"x": x})[0], want,
                               rtol=1e-5, atol=1e-6)
    relu_dropped = InferenceSession(native, disabled_optimizers=()).run(None, {"x": x})[0]
    if not np.allclose(relu_dropped, want, rtol=1e-5, atol=1e-6):  # onnxruntime still has it
        np.testing.assert_allclose(
            InferenceSession(native, disabled_optimizers=["ReluQuantRewrite"]).run(None, {"x": x})[0],
            want, rtol=1e-5, atol=1e-6)
