"""FixInputs: named inputs become initializers of their declared type; bad names and values
stop with one line naming the input and the fix. Also the compiler and CLI wiring."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from _prep_util import F, apply_twice, check, init, make_model, run, vi
from fp8onnx.errors import UserError
from fp8onnx.passes import FixInputs, InlineConstantIf

I64, B = TensorProto.INT64, TensorProto.BOOL


def _rate_model():
    """Before: y = If(Equal(sr, 16000)) then {Relu(x)} else {Neg(x)}, inputs x, sr, flag, scale.
    Expected with sr fixed: sr is an int64 initializer, no longer an input."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [vi("t", [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [2])])
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["c"]),
             helper.make_node("If", ["c"], ["y0"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["y0", "scale"], ["y1"]),
             helper.make_node("Where", ["flag", "y1", "x"], ["y"])]
    return make_model(nodes, [vi("x", [2]), vi("sr", [], I64), vi("flag", [2], B), vi("scale", [1])],
                      [vi("y", [2])], [init("k16", np.array(16000, np.int64))])


FEEDS = {"x": np.array([-2.0, 3.0], np.float32), "flag": np.array([True, False]),
         "scale": np.array([0.5], np.float32)}


@pytest.mark.parametrize("sr", [16000, 8000])
def test_fixed_input_becomes_initializer_and_if_inlines(sr):
    m = _rate_model()
    original, m, modified = apply_twice(FixInputs({"sr": sr, "flag": [1, 0], "scale": [2]}), m)
    assert modified
    check(m)
    assert [v.name for v in m.graph.input] == ["x"]
    got = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert got["sr"].dtype == np.int64 and got["sr"].shape == () and got["sr"] == sr
    assert got["flag"].dtype == bool and got["flag"].tolist() == [True, False]
    assert got["scale"].dtype == np.float32 and got["scale"].tolist() == [2.0]
    feeds = dict(FEEDS, flag=np.array([True, False]), scale=np.array([2.0], np.float32), sr=np.array(sr))
    want = run(original, feeds)[0]
    np.testing.assert_array_equal(run(m, {"x": feeds["x"]})[0], want)
    assert InlineConstantIf()(m).modified
    assert not any(n.op_type == "If" for n in m.graph.node)
    np.testing.assert_array_equal(run(m, {"x": feeds["x"]})[0], want)


def test_input_with_default_initializer_takes_the_value():
    m = _rate_model()
    m.graph.initializer.append(init("sr", np.array(8000, np.int64)))   # an overridable default
    _, m, modified = apply_twice(FixInputs({"sr": 16000}), m)
    assert modified and "sr" not in [v.name for v in m.graph.input]
    assert [onnx.numpy_helper.to_array(t).item() for t in m.graph.initializer if t.name == "sr"] == [16000]


@pytest.mark.parametrize("values,message", [
    ({"rate": 16000}, "cannot fix input 'rate': the model has no such input (its inputs: x, sr, flag, scale): "
                      "name one of them"),
    ({"sr": 16000.5}, "cannot fix input 'sr' (int64) to 16000.5: the value does not fit int64; give e.g. sr=16000"),
    ({"sr": 2 ** 70}, "does not fit int64"),
    ({"sr": [16000, 8000]}, "cannot fix input 'sr': it takes a scalar but the value [16000, 8000] has shape [2]"),
    ({"flag": [2, 0]}, "cannot fix input 'flag' (bool) to [2, 0]: the value does not fit bool; give e.g. flag=true"),
    ({"flag": [True]}, "it takes shape [2] but the value [True] has shape [1]"),
    ({"scale": [True]}, "cannot fix input 'scale' (float) to [True]: the value does not fit float"),
    ({"x": "abc"}, "cannot fix input 'x' (float) to 'abc': not a number"),
])
def test_bad_names_and_values_are_user_errors(values, message):
    with pytest.raises(UserError) as e:
        FixInputs(values)(_rate_model())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_compile_model_fixes_inputs_records_them_and_quantizes_inlined_activations():
    """A Conv network inside If(Equal(sr, 16000)): without fix_inputs only the weights are
    FP8; with it the activations too, and the recipe in the model says so."""
    import json

    import fp8onnx

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
                                helper.make_node("Relu", ["h"], ["t"])], "then", [], [vi("t", [1, 4, 8, 8])],
                               [init("w", w)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e0"]), helper.make_node("Concat", ["e0", "e0"], ["e"], axis=1)],
                               "else", [], [vi("e", [1, 4, 8, 8])])
    m = make_model([helper.make_node("Equal", ["sr", "k16"], ["c"]),
                    helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [1, 2, 8, 8]), vi("sr", [], I64)], [vi("y", [1, 4, 8, 8])],
                   [init("k16", np.array(16000, np.int64))])
    feeds = [{"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32), "sr": np.array(16000)} for _ in range(4)]
    plain = fp8onnx.compile_model(m, calibration=feeds)
    fixed = fp8onnx.compile_model(m, calibration=feeds, fix_inputs={"sr": np.int64(16000)})
    assert [(bool(u.weight_uses), bool(u.activation_uses)) for u in plain.plan.units] == [(True, False)]
    assert [(bool(u.weight_uses), bool(u.activation_uses), u.graph_path) for u in fixed.plan.units] == [
        (True, True, "main")]
    assert [v.name for v in fixed.model.graph.input] == ["x"]
    recipe = json.loads(next(p.value for p in fixed.model.metadata_props if p.key == "fp8onnx.recipe"))
    assert recipe["fix_inputs"] == {"sr": 16000}
    x = feeds[0]["x"]
    ref = run(m, {"x": x, "sr": np.array(16000)})[0]
    got = run(fixed.model, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.15 * np.abs(ref).max()          # FP8, not float, yet close
    assert not np.array_equal(got, run(plain.model, {"x": x, "sr": np.array(16000)})[0])
    with pytest.raises(UserError, match="calibration feed 0 gives input 'sr' other values"):
        fp8onnx.compile_model(m, calibration=[dict(feeds[0], sr=np.array(8000))], fix_inputs={"sr": 16000})


def test_cli_fix_input(tmp_path):
    from fp8onnx.compile import main, parse_fix_input

    assert parse_fix_input("sr=16000") == ("sr", 16000)
    assert parse_fix_input("on=true") == ("on", True)
    assert parse_fix_input("v=1,2.5") == ("v", [1, 2.5])
    m = _rate_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    out = tmp_path / "q.onnx"
    assert main([str(path), "-o", str(out), "--calib", "random", "--fix-input", "sr=16000",
                 "--fix-input", "flag=1,0", "--fix-input", "scale=2"]) == 0
    q = onnx.load(out)
    assert [v.name for v in q.graph.input] == ["x"]
    assert not any(n.op_type == "If" for n in q.graph.node)
    assert main([str(path), "-o", str(tmp_path / "r.onnx"), "--calib", "random", "--fix-input", "rate=1"]) == 2
    assert main([str(path), "-o", str(tmp_path / "r.onnx"), "--calib", "random",
                 "--fix-input", "sr=1", "--fix-input", "sr=2"]) == 2
    assert not (tmp_path / "r.onnx").exists()
