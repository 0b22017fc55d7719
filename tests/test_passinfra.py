"""The pass infrastructure: requires/call/ensures, measured `modified`, managers, instruments."""
import os

import onnx
import pytest

import onnx_builders as B
from fp8onnx.errors import PassError, PreconditionError
from fp8onnx.passinfra import DumpAfter, Pass, PassManager, PassResult, Timing


class ClearDocStrings(Pass):
    def call(self, model):
        changed = False
        for n in model.graph.node:
            if n.doc_string:
                n.doc_string = ""
                changed = True
        return PassResult(model, changed)


class NeedsGemm(Pass):
    def requires(self, model):
        if not any(n.op_type == "Gemm" for n in model.graph.node):
            raise PreconditionError("needs a Gemm")

    def call(self, model):
        return PassResult(model, False)


class Broken(Pass):
    def call(self, model):
        return {}["missing"]


def _model():
    m = B.conv_relu_gemm()
    m.graph.node[0].doc_string = "hello"
    return m


def test_modified_is_measured_and_second_run_is_unmodified():
    m = _model()
    p = ClearDocStrings()
    assert p.name == "clear_doc_strings"
    assert p(m).modified is True
    assert p(m).modified is False


def test_requires_is_checked_before_call():
    m = _model()
    NeedsGemm()(m)
    del m.graph.node[3]
    with pytest.raises(PreconditionError, match="needs a Gemm"):
        NeedsGemm()(m)


def test_unexpected_error_names_the_pass_and_chains():
    with pytest.raises(PassError, match="pass 'broken' failed: KeyError") as e:
        Broken()(_model())
    assert isinstance(e.value.__cause__, KeyError)


def test_manager_is_a_pass_nests_skips_and_instruments(tmp_path):
    timing = Timing()
    inner = PassManager([ClearDocStrings()], name="inner")
    pm = PassManager([inner, NeedsGemm(), Broken()], instruments=[timing, DumpAfter(str(tmp_path))],
                     skip={"broken"})
    assert isinstance(pm, Pass)
    res = pm(_model())
    assert res.modified is True
    assert [r[0] for r in timing.records] == ["inner", "needs_gemm"]
    assert sorted(os.listdir(tmp_path)) == ["00_inner.onnx", "01_needs_gemm.onnx"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "00_inner.onnx")))
    assert pm(res.model).modified is False


def test_fixed_point_stops_when_nothing_changes():
    pm = PassManager([ClearDocStrings()], fixed_point=True)
    t = Timing()
    pm.instruments.append(t)
    pm(_model())
    assert [r[2] for r in t.records] == [True, False]
