"""`python -m fp8onnx.compile`: success output, and one clean line with exit 2 for bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fp8onnx.compile", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_clean_error(p, *needles, out=None):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    if out is not None:
        assert not os.path.exists(out)
        assert not [f for f in os.listdir(os.path.dirname(out)) if f.endswith(".tmp")]


def test_success_summary_report_and_output(tmp_path):
    out = tmp_path / "cnn_fp8.onnx"
    rep = tmp_path / "report.json"
    p = run(CNN, "-o", str(out), "--calib", CALIB, "--report", str(rep), "--scheme", "extended")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # no warnings either (runpy's double-import warning once showed here)
    assert "Conv: 3 e4m3" in p.stdout and "Gemm: 2 e4m3" in p.stdout
    # its BatchNorms follow Convs: deployment folds them, so they are no quantization points
    assert "3 BatchNormalization: batchnorm: follows a Conv, into which deployment folds it" in p.stdout
    assert "weights" in p.stdout and "wrote" in p.stdout
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    report = json.loads(rep.read_text())
    assert report["summary"]["quantized_by_op"]["Conv"] == {"e4m3": 3}
    assert {u["node"] for u in report["units"]} >= {"conv1", "fc2"}


def test_cli_output_is_deterministic_and_matches_api(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (a, b):
        assert run(CNN, "-o", str(out), "--calib", CALIB, "--format", "e3m4").returncode == 0
    assert a.read_bytes() == b.read_bytes()
    import fp8onnx
    api = fp8onnx.compile(CNN, calibration=CALIB, format="e3m4")
    assert api.SerializeToString(deterministic=True) == a.read_bytes()


def test_mixed_format_flags_and_recipe_file(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"format": "e4m3", "op_types": {"Gemm": "float"}}))
    out = tmp_path / "o.onnx"
    p = run(CNN, "-o", str(out), "--calib", CALIB, "--recipe", str(recipe), "--weight-format", "e3m4")
    assert p.returncode == 0, p.stderr
    assert "Conv: 3 e3m4/e4m3" in p.stdout
    assert "recipe keeps op type Gemm in float" in p.stdout
    meta = {m.key: m.value for m in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["fp8onnx.recipe"])["weight_format"] == "e3m4"


def test_keep_first_flag_keeps_only_the_first_conv_float(tmp_path):
    out = tmp_path / "o.onnx"
    p = run(CNN, "-o", str(out), "--calib", CALIB, "--keep-first")
    assert p.returncode == 0, p.stderr
    assert "1 Conv: kept float by --keep-first" in p.stdout, p.stdout
    q = onnx.load(str(out))
    meta = {m.key: m.value for m in q.metadata_props}
    assert json.loads(meta["fp8onnx.recipe"])["keep_first"] is True
    src = onnx.load(CNN)
    first = next(n.name for n in src.graph.node if n.op_type == "Conv")
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    fed_by_dq = {name: producers.get(n.input[1]) == "DequantizeLinear" for name, n in convs.items()}
    assert fed_by_dq.pop(first) is False and all(fed_by_dq.values()), fed_by_dq


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(CNN, tmp_path / "in.onnx")
    return tmp_path


def test_not_onnx(workdir):
    bad = workdir / "notes.onnx"
    bad.write_text("this is not a model\n")
    assert_clean_error(run(str(bad), "-o", str(workdir / "o.onnx"), "--calib", CALIB), "notes.onnx",
                       out=str(workdir / "o.onnx"))


def test_truncated(workdir):
    data = (workdir / "in.onnx").read_bytes()
    (workdir / "cut.onnx").write_bytes(data[: len(data) // 2])
    assert_clean_error(run(str(workdir / "cut.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB),
                       "truncated", out=str(workdir / "o.onnx"))


def test_missing_input_file(workdir):
    assert_clean_error(run(str(workdir / "nope.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB), "nope.onnx")


def test_unknown_format_is_usage_error(workdir):
    p = run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--format", "e2m5", "--calib", CALIB)
    assert_clean_error(p, "e2m5", "e4m3")


def test_no_calibration_names_the_choices(workdir):
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx")), "--calib", "random",
                       out=str(workdir / "o.onnx"))


def test_output_equals_input_and_input_untouched(workdir):
    src = workdir / "in.onnx"
    before = src.read_bytes()
    assert_clean_error(run(str(src), "-o", str(src), "--calib", CALIB), "input")
    assert src.read_bytes() == before


def test_float16_model_is_refused_with_the_fix(workdir):
    # onnxruntime's own converter makes the float16 model a user would hold.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = workdir / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(CNN), keep_io_types=True), str(src))
    before = src.read_bytes()
    out = str(workdir / "o.onnx")
    assert_clean_error(run(str(src), "-o", out, "--calib", CALIB), "nothing to quantize", "FLOAT16",
                       "'conv1.weight'", "give it the float32 model", out=out)
    assert src.read_bytes() == before


def test_output_folder_missing(workdir):
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "no" / "o.onnx"), "--calib", CALIB),
                       "does not exist")


def test_calibration_with_wrong_names_and_nan(workdir):
    wrong = workdir / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((4, 1, 8, 8), np.float32))
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", str(wrong)),
                       "input", out=str(workdir / "o.onnx"))
    nan = workdir / "nan.npz"
    x = np.load(CALIB)["input"][:4].copy()
    x[2, 0, 3, 3] = np.nan
    np.savez(nan, input=x)
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", str(nan)),
                       "NaN", out=str(workdir / "o.onnx"))


def test_bad_recipe(workdir):
    r = workdir / "r.json"
    r.write_text("{not json")
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB,
                           "--recipe", str(r)), "not valid JSON")
    r.write_text(json.dumps({"op_types": {"Conv": "e9m9"}}))
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB,
                           "--recipe", str(r)), "e9m9")
    r.write_text(json.dumps({"formatt": "e4m3"}))
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB,
                           "--recipe", str(r)), "formatt")
    r.write_text(json.dumps({"pow2_scales": "false"}))  # a string, which Python would read as true
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB,
                           "--recipe", str(r)), "'pow2_scales' must be true or false")


def test_debug_shows_traceback_and_dumps_passes(workdir):
    bad = workdir / "notes.onnx"
    bad.write_text("nope")
    p = run(str(bad), "-o", str(workdir / "o.onnx"), "--calib", CALIB, "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr
    out = workdir / "ok.onnx"
    p = run(str(workdir / "in.onnx"), "-o", str(out), "--calib", CALIB, "--debug")
    assert p.returncode == 0, p.stderr
    dumps = sorted(os.listdir(workdir / "ok_passes"))
    assert dumps[0].startswith("00_") and any("insert_qdq" in d for d in dumps)


def test_bad_numbers(workdir):
    assert_clean_error(run(str(workdir / "in.onnx"), "-o", str(workdir / "o.onnx"), "--calib", CALIB,
                           "--samples", "0"), "--samples")


def test_external_data_output_and_input(tmp_path):
    # an input saved with external data, compiled to an output with external data
    src = onnx.load(CNN)
    ext_in = tmp_path / "in_ext.onnx"
    onnx.save_model(src, str(ext_in), save_as_external_data=True, location="in_ext.weights", size_threshold=256)
    out = tmp_path / "out.onnx"
    p = run(str(ext_in), "-o", str(out), "--calib", CALIB, "--external-data")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.onnx.data").exists() or any(f.endswith(".data") for f in os.listdir(tmp_path))
    q = onnx.load(str(out))  # loads the external tensors from beside the file
    onnx.checker.check_model(str(out), full_check=True)
    x = np.load(os.path.join(ROOT, "models", "data", "digits_test.npz"))["input"][:32]
    import onnx_builders as B
    inline = __import__("fp8onnx").compile(CNN, calibration=CALIB)
    np.testing.assert_array_equal(B.ort_run(q, {"input": x}), B.ort_run(inline, {"input": x}))
