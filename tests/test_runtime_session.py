"""fp8onnx.runtime.InferenceSession: errors, threads, lifetime, and parity with onnxruntime's API."""
import gc
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

from fp8onnx import formats
from fp8onnx.errors import UserError
from fp8onnx.runtime import InferenceSession, OrtError, OrtUnavailableError, OrtUserError, _capi, ops
from fp8onnx.runtime._customops import domain


def fq_model(fmt="e4m3", axis=1, extra=None):
    """y = FakeQuant(x, scale) with x and scale as graph inputs."""
    attrs = {"format": fmt, "axis": axis, **(extra or {})}
    node = helper.make_node(ops.FAKE_QUANT, ["x", "scale"], ["y"], name="fq0", domain=ops.DOMAIN,
                            **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 4]),
                      helper.make_tensor_value_info("scale", T.FLOAT, None)],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", 4])])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), ops.opset_import()])


X = np.arange(-8, 8, dtype=np.float32).reshape(4, 4) * 0.37


def test_unknown_format_attribute_fails_at_creation_with_the_choices():
    with pytest.raises(OrtUserError, match=r"node 'fq0'.*unknown format 'e9m9'.*e4m3, e5m2, e3m4") as e:
        InferenceSession(fq_model("e9m9"))
    assert isinstance(e.value, UserError)


def test_missing_format_and_bad_saturate_fail_at_creation():
    model = fq_model()
    attrs = model.graph.node[0].attribute
    attrs.remove(next(a for a in attrs if a.name == "format"))
    with pytest.raises(OrtUserError, match="no 'format' attribute"):
        InferenceSession(model)
    with pytest.raises(OrtUserError, match="saturate=7"):
        InferenceSession(fq_model(extra={"saturate": 7}))


@pytest.mark.parametrize("scale, pattern", [
    (np.ones((2, 2), np.float32), "scale must be a scalar"),
    (np.ones(3, np.float32), "scale must be a scalar"),
    (np.float32(0.0), "positive and finite"),
    (np.array([1, -1, 1, 1], np.float32), "positive and finite"),
    (np.float32(np.nan), "positive and finite"),
    (np.float32(np.inf), "positive and finite"),
])
def test_bad_scale_raises_clear_error_and_session_keeps_working(scale, pattern):
    sess = InferenceSession(fq_model())
    with pytest.raises(OrtUserError, match=f"node 'fq0'.*{pattern}"):
        sess.run(None, {"x": X, "scale": scale})
    y = sess.run(None, {"x": X, "scale": np.float32(0.5)})[0]
    np.testing.assert_array_equal(y, formats.get("e4m3").fake_quant(X, np.float32(0.5)))


def test_axis_out_of_range_raises():
    sess = InferenceSession(fq_model(axis=5))
    with pytest.raises(OrtUserError, match="axis 5 is out of range"):
        sess.run(None, {"x": X, "scale": np.ones(4, np.float32)})


def test_errors_do_not_crash_the_process():
    """Every kernel error path in a fresh interpreter, which must exit normally."""
    code = textwrap.dedent("""
        import numpy as np
        from fp8onnx.runtime import InferenceSession, OrtUserError
        from tests.test_runtime_session import fq_model, X
        try:
            InferenceSession(fq_model("nope"))
        except OrtUserError:
            pass
        s = InferenceSession(fq_model())
        for scale in (np.zeros((2, 2), np.float32), np.float32(-1), np.ones(3, np.float32)):
            try:
                s.run(None, {"x": X, "scale": scale})
            except OrtUserError:
                pass
        print("alive", float(s.run(None, {"x": X, "scale": np.float32(1)})[0].sum()))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("alive")


def test_bad_feed_raises_ort_error():
    sess = InferenceSession(fq_model())
    with pytest.raises(OrtError, match="(?i)data type|type"):
        sess.run(None, {"x": X.astype(np.float64), "scale": np.float32(1)})
    with pytest.raises(ValueError, match="dtype"):
        sess.run(None, {"x": X.astype(object), "scale": np.float32(1)})


def test_missing_model_file_and_gpu_provider_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        InferenceSession(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="CUDAExecutionProvider"):
        InferenceSession(fq_model(), providers=["CUDAExecutionProvider"])


def test_missing_api_version_names_the_onnxruntime_needed(monkeypatch):
    monkeypatch.setattr(_capi, "ORT_API_VERSION", 10_000)
    with pytest.raises(OrtUnavailableError, match=r"onnxruntime>=1\.19"):
        _capi.Api(_capi.library_path())


def test_wheel_without_the_c_library_names_the_onnxruntime_needed(monkeypatch, tmp_path):
    import onnxruntime

    (tmp_path / "onnxruntime" / "capi").mkdir(parents=True)
    monkeypatch.setattr(onnxruntime, "__file__", str(tmp_path / "onnxruntime" / "__init__.py"))
    with pytest.raises(OrtUnavailableError, match=r"libonnxruntime.*onnxruntime>=1\.19"):
        _capi.library_path()


def test_two_threads_running_one_session_get_correct_results():
    sess = InferenceSession(fq_model("e5m2"))
    rng = np.random.default_rng(0)
    feeds = [(rng.standard_normal((50_000, 4)).astype(np.float32), np.float32(s))
             for s in (0.01, 0.5, 3.0, 0.07)]
    want = [formats.get("e5m2").fake_quant(x, s) for x, s in feeds]
    errors = []

    def work(k):
        try:
            for i in range(40):
                j = (i + k) % len(feeds)
                y = sess.run(["y"], {"x": feeds[j][0], "scale": feeds[j][1]})[0]
                if not np.array_equal(y, want[j], equal_nan=True):
                    errors.append((k, i))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_session_lifetime_create_drop_gc_create_again():
    base = domain().live_kernels() if _capi._API else 0
    sess = InferenceSession(fq_model())
    y = sess.run(None, {"x": X, "scale": np.float32(0.25)})[0]
    assert domain().live_kernels() >= base + 1
    del sess
    gc.collect()
    assert domain().live_kernels() == base  # KernelDestroy ran for the node
    expected = formats.get("e4m3").fake_quant(X, np.float32(0.25))
    np.testing.assert_array_equal(y, expected)  # outputs outlive their session
    for _ in range(3):
        s2 = InferenceSession(fq_model())
        np.testing.assert_array_equal(s2.run(None, {"x": X, "scale": np.float32(0.25)})[0], expected)
        del s2
        gc.collect()
    assert domain().live_kernels() == base


def test_api_matches_onnxruntime(tmp_path):
    model = fq_model()
    model.producer_name, model.model_version, model.doc_string = "fp8onnx-test", 7, "doc"
    model.domain = "ai.example"
    model.graph.doc_string = "graph doc"
    helper.set_model_props(model, {"recipe": "{}", "format": "e4m3"})
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    ours = InferenceSession(str(path))
    # onnxruntime's own session on the same model with the op replaced by Identity
    plain = fq_model()
    plain.CopyFrom(model)
    node = plain.graph.node[0]
    node.op_type, node.domain = "Add", ""
    del node.attribute[:]
    theirs = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(ours.get_inputs() + ours.get_outputs(), theirs.get_inputs() + theirs.get_outputs()):
        assert (a.name, a.type, a.shape) == (b.name, b.type, b.shape)
    ma, mb = ours.get_modelmeta(), theirs.get_modelmeta()
    for field in ("producer_name", "graph_name", "domain", "description", "graph_description",
                  "version", "custom_metadata_map"):
        assert getattr(ma, field) == getattr(mb, field), field
    assert ours.get_providers() == ["CPUExecutionProvider"]
    # run with selected outputs, model given as a path, options honoured
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    y = InferenceSession(path, so).run(["y"], {"x": X, "scale": np.float32(1)})
    assert len(y) == 1 and y[0].shape == X.shape and y[0].dtype == np.float32


def test_zero_dim_feeds_and_outputs_keep_their_shape_as_in_onnxruntime():
    """A 0-d feed stays 0-d (numpy's ascontiguousarray would make it 1-d)."""
    x = helper.make_tensor_value_info("x", T.FLOAT, [])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", T.FLOAT, [])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21)])
    feed = {"x": np.array(2.5, np.float32)}
    ours = InferenceSession(model).run(None, feed)[0]
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert ours.shape == theirs.shape == () and ours == theirs == -2.5


def test_public_api_and_light_import():
    import fp8onnx.runtime as rt

    assert all(hasattr(rt, name) for name in rt.__all__)
    assert rt.ops.OP_TYPES == (rt.FAKE_QUANT, rt.DEQUANTIZE, rt.QUANTIZE) and rt.DOMAIN == "ai.fp8onnx"
    code = "import sys, fp8onnx.runtime; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr  # the compiler imports ops without Numba


def test_profiling_and_optimized_model_options(tmp_path):
    import json
    import os

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = InferenceSession(fq_model(), so)
    sess.run(None, {"x": X, "scale": np.float32(1)})
    trace = sess.end_profiling()
    assert os.path.exists(trace) and trace.startswith(str(tmp_path / "prof"))
    events = json.load(open(trace))
    assert any(e.get("args", {}).get("op_name") == ops.FAKE_QUANT for e in events)
    assert (tmp_path / "opt.onnx").stat().st_size > 0
