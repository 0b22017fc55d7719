"""``python -m fp8onnx.evaluate``: outputs on success; one-line exit-2 errors and no files otherwise."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnx_builders as B
import fp8onnx
from fp8onnx.evaluate import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "digits_cnn.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")
TEST_NPZ = os.path.join(ROOT, "models", "data", "digits_test.npz")


@pytest.fixture(scope="module")
def fp8_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for fmt in ("e4m3", "e3m4"):
        out[fmt] = str(d / f"cnn_{fmt}.onnx")
        onnx.save(fp8onnx.compile(CNN, calibration=CALIB, format=fmt), out[fmt])
    return out


def test_cli_writes_json_html_and_annotated_model(fp8_paths, tmp_path):
    pytest.importorskip("matplotlib")
    paths = [str(tmp_path / n) for n in ("r.html", "r.json", "a.onnx")]
    proc = subprocess.run([sys.executable, "-m", "fp8onnx.evaluate", CNN, fp8_paths["e4m3"], "--data", TEST_NPZ,
                           "--samples", "100", "--batch-size", "20", "--report", paths[0], "--json", paths[1],
                           "--annotate", paths[2]], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "evaluated 100 samples" in proc.stdout and "top-1 agreement" in proc.stdout
    report = json.loads(open(paths[1]).read())
    assert report["samples"] == 100 and len(report["layers"]) == 10
    assert open(paths[0]).read().startswith("<!DOCTYPE html>")
    annotated = onnx.load(paths[2])
    assert sum("fp8onnx eval:" in n.doc_string for n in annotated.graph.node) == 15  # 5 weight DQ + 5 Q/DQ pairs


def test_ort_qdq_flag_gives_the_same_figures(fp8_paths, tmp_path):
    """--ort-qdq runs onnxruntime's own FP8 Q/DQ kernels; the default's fused kernels give the same bits."""
    reports = []
    for flag in ([], ["--ort-qdq"]):
        path = str(tmp_path / f"r{len(reports)}.json")
        assert main([CNN, fp8_paths["e4m3"], "--data", TEST_NPZ, "--samples", "60", "--batch-size", "20",
                     "--json", path, *flag]) == 0
        report = json.loads(open(path).read())
        report.pop("seconds")
        reports.append(report)
    assert reports[0] == reports[1]


def _bad_fp8_format(src, dst):
    m = onnx.load(src)
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "format":
                a.s = b"e9m9"
    onnx.save(m, dst)


def _other_inputs(dst):
    onnx.save(B.conv_relu_gemm(), dst)


@pytest.mark.parametrize("case", ["missing_float", "missing_fp8", "not_onnx", "bad_data_names", "bad_data_shape", "missing_data",
                                  "inputs_differ", "unknown_format", "bad_samples", "same_outputs",
                                  "output_folder_missing"])
def test_cli_bad_input_one_line_exit_2_no_files(case, fp8_paths, tmp_path, capsys):
    fp8 = fp8_paths["e4m3"]
    data, flt = TEST_NPZ, CNN
    outs = {"--json": str(tmp_path / "r.json"), "--annotate": str(tmp_path / "a.onnx")}
    extra = []
    if case == "missing_float":
        flt = str(tmp_path / "nope.onnx")
    elif case == "missing_fp8":
        fp8 = str(tmp_path / "nope.onnx")
    elif case == "not_onnx":
        fp8 = str(tmp_path / "junk.onnx")
        open(fp8, "wb").write(b"not a model at all")
    elif case == "bad_data_names":
        data = str(tmp_path / "d.npz")
        np.savez(data, x=np.zeros((2, 1, 8, 8), np.float32))
    elif case == "bad_data_shape":
        data = str(tmp_path / "d.npz")
        np.savez(data, input=np.zeros((2, 1, 9, 9), np.float32), label=np.zeros(2))
    elif case == "missing_data":
        data = str(tmp_path / "nothere.npz")
    elif case == "inputs_differ":
        flt = str(tmp_path / "other.onnx")
        _other_inputs(flt)
    elif case == "unknown_format":
        fp8 = str(tmp_path / "bad.onnx")
        _bad_fp8_format(fp8_paths["e3m4"], fp8)
    elif case == "bad_samples":
        extra = ["--samples", "0"]
    elif case == "same_outputs":
        outs["--annotate"] = outs["--json"]
    elif case == "output_folder_missing":
        outs["--annotate"] = str(tmp_path / "no" / "such" / "a.onnx")
    argv = [flt, fp8, "--data", data, *extra]
    for k, v in outs.items():
        argv += [k, v]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert not any(os.path.exists(p) for p in outs.values())
    assert os.listdir(tmp_path) == [] or case in ("not_onnx", "bad_data_names", "bad_data_shape", "inputs_differ",
                                                 "unknown_format")


def test_cli_unknown_format_message_names_it(fp8_paths, tmp_path, capsys):
    bad = str(tmp_path / "bad.onnx")
    _bad_fp8_format(fp8_paths["e3m4"], bad)
    assert main([CNN, bad, "--data", TEST_NPZ]) == 2
    assert "'e9m9'" in capsys.readouterr().err


def test_cli_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main([CNN])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err
