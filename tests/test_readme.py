"""The README's Python examples run as written, from the project root."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_python_block_runs(index, monkeypatch, tmp_path):
    code = blocks()[index]
    monkeypatch.chdir(ROOT)
    if "digits_cnn_fp8.onnx" in code:  # the block that loads the first command's output
        import fp8onnx
        out = tmp_path / "digits_cnn_fp8.onnx"
        out.write_bytes(fp8onnx.compile("models/digits_cnn.onnx",
                                        calibration="models/data/digits_calib.npz").SerializeToString())
        code = code.replace('"digits_cnn_fp8.onnx"', repr(str(out)))
    exec(compile(code, f"README block {index}", "exec"), {"__name__": "readme"})


def test_readme_opens_with_the_two_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    cmds = re.findall(r"```\n(pip install .*?)\n```", text)
    assert cmds[0].startswith("pip install . && python -m fp8onnx.compile models/")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert cmds[1] in ci  # CI runs exactly the README's test command
