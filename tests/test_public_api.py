"""The public API: every name in each curated __all__ exists, and the entry points resolve."""
import importlib
import subprocess
import sys

import pytest

MODULES = ["fp8onnx", "fp8onnx.formats", "fp8onnx.kernels", "fp8onnx.passinfra", "fp8onnx.graph",
           "fp8onnx.pattern", "fp8onnx.schemes", "fp8onnx.recipe", "fp8onnx.planner", "fp8onnx.qdq",
           "fp8onnx.api", "fp8onnx.calibration", "fp8onnx.runtime", "fp8onnx.passes", "fp8onnx.modelio",
           "fp8onnx.report", "fp8onnx.surgeon", "fp8onnx.evaluation", "fp8onnx.zoo", "fp8onnx.errors"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    mod = importlib.import_module(name)
    assert mod.__all__, name
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, (name, missing)


def test_top_level_entry_points():
    import fp8onnx

    for n in ("compile", "compile_model", "evaluate", "tune", "prepare", "plan_quantization", "Recipe",
              "Pass", "PassResult", "PassManager", "GraphSurgeonPass", "formats", "schemes", "UserError"):
        assert n in fp8onnx.__all__ and hasattr(fp8onnx, n), n
    assert callable(fp8onnx.compile) and callable(fp8onnx.evaluate) and callable(fp8onnx.tune)
    from fp8onnx.passes import Annotate, BatchNormCalibration, InsertQDQ, LiftConstants  # noqa: F401


def test_no_top_level_passes_package_is_installed():
    # passes/ is installed as fp8onnx.passes only; a generic top-level name would collide
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('passes'))"],
                         capture_output=True, text=True, cwd="/", timeout=60)
    assert out.stdout.strip() == "None", out.stdout


def test_passes_resolve_from_a_source_checkout_without_the_editable_finder():
    # The README's first command runs `python -m fp8onnx.compile` in the repository root
    # after a plain `pip install .`: fp8onnx then comes from the source tree, where
    # passes/ sits beside it. Drop any editable-install finder to see that case.
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "import fp8onnx.passes, fp8onnx\n"
            "print(fp8onnx.passes.InsertQDQ.__module__, fp8onnx.__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fp8onnx.passes.insert_qdq ")


@pytest.mark.parametrize("cli", ["compile", "evaluate", "tune", "zoo"])
def test_command_line_modules_start_without_runpy_warnings(cli):
    # A module that `import fp8onnx` already imported makes `python -m` warn on every run.
    out = subprocess.run([sys.executable, "-W", "default", "-m", f"fp8onnx.{cli}", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
