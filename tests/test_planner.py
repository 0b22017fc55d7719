"""Pattern matching and planning: which units each scheme finds, and why nodes stay float."""
import numpy as np
import onnx
import pytest
from onnx import helper

import onnx_builders as B
from fp8onnx import schemes
from fp8onnx.graph import GraphIndex
from fp8onnx.pattern import PNode, Pattern, match_at
from fp8onnx.planner import plan_quantization
from fp8onnx.errors import UserError
from fp8onnx.recipe import Recipe


def units(plan):
    return {u.node: u for u in plan.units}


def test_standard_conv_gemm_units_and_axes():
    plan = plan_quantization(B.conv_relu_gemm(), Recipe())
    u = units(plan)
    assert u["conv"].unit == "conv_act" and set(u["conv"].nodes) == {"conv", "relu"}
    assert [(w.tensor, w.axis) for w in u["conv"].weight_uses] == [("conv.w", 0)]
    assert [a.tensor for a in u["conv"].activation_uses] == ["input"]
    # Gemm with transB=1 stores W as [N, K]: the output channel is axis 0.
    assert [(w.tensor, w.axis) for w in u["fc"].weight_uses] == [("fc.w", 0)]
    assert plan.activation_tensors() == ["input", "flat"]
    assert plan.float_nodes == []


def test_gemm_without_transb_uses_axis_1():
    m = B.conv_relu_gemm()
    gemm = m.graph.node[3]
    del gemm.attribute[:]
    fw = onnx.numpy_helper.to_array(m.graph.initializer[2]).T.copy()
    m.graph.initializer[2].CopyFrom(onnx.numpy_helper.from_array(fw, "fc.w"))
    u = units(plan_quantization(m, Recipe()))
    assert [(w.tensor, w.axis) for w in u["fc"].weight_uses] == [("fc.w", 1)]


def test_attention_standard_finds_linears_and_activation_matmuls():
    plan = plan_quantization(B.attention_block(), Recipe())
    u = units(plan)
    for p in "qkvo":
        assert u[f"{p}_proj"].unit == "linear_bias"
        assert [(w.tensor, w.axis) for w in u[f"{p}_proj"].weight_uses] == [(f"{p}.w", 1)]
    assert u["qk"].unit == "matmul_act"
    assert sorted(a.tensor for a in u["qk"].activation_uses) == ["kt", "q"]
    assert sorted(a.tensor for a in u["av"].activation_uses) == ["probs", "v"]
    # Softmax is never quantized; the standard scheme leaves the LayerNorm alone.
    assert all("softmax" not in x.nodes and "ln_div" not in x.nodes for x in plan.units)


def test_extended_adds_layernorm_and_residual_but_not_bias_adds():
    plan = plan_quantization(B.attention_block(), Recipe(scheme="extended"))
    u = units(plan)
    assert u["ln_mean"].unit == "layernorm_decomposed"
    assert len(u["ln_mean"].nodes) == 9
    # the LayerNorm's input is read by ReduceMean and Sub: both slots are rewired
    assert sorted((a.node, a.index) for a in u["ln_mean"].activation_uses) == [("ln_mean", 0), ("ln_sub", 0)]
    assert u["residual"].unit == "add"
    assert sorted(a.tensor for a in u["residual"].activation_uses) == ["o", "x"]
    # the bias Adds belong to their Linear units: nothing is inserted inside a unit
    assert "q_bias" not in u and "q_bias" in u["q_proj"].nodes


def test_nonconstant_weight_stays_float_with_reason():
    m = B.model([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm"),
                 helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                [B.vi("a", [2, 3]), B.vi("b", [3, 4]), B.vi("x", [1, 1, 4, 4]), B.vi("w", [1, 1, 1, 1])],
                [B.vi("c", [2, 4]), B.vi("y", [1, 1, 4, 4])])
    plan = plan_quantization(m, Recipe())
    assert units(plan)["mm"].unit == "matmul_act"
    (f,) = plan.float_nodes
    assert f.node == "conv" and "weight 'w' is not constant" in f.reason


def test_recipe_overrides_float_and_formats():
    r = Recipe(op_types={"Gemm": {"weight": "e3m4"}}, nodes={"^conv$": "float"})
    u = units(plan_quantization(B.conv_relu_gemm(), r))
    assert u["conv"].status == "float" and "recipe keeps nodes" in u["conv"].notes[0]
    assert (u["fc"].weight_format, u["fc"].activation_format) == ("e3m4", "e4m3")
    u2 = units(plan_quantization(B.conv_relu_gemm(), Recipe(exclude=["fc"])))
    assert u2["fc"].status == "float" and "excluded" in u2["fc"].notes[0]


def test_keep_first_last():
    u = units(plan_quantization(B.conv_relu_gemm(), Recipe(keep_first_last=True)))
    assert u["conv"].status == u["fc"].status == "float"


def test_keep_first_keeps_only_the_layer_reading_the_input():
    u = units(plan_quantization(B.conv_relu_gemm(), Recipe(keep_first=True)))
    assert u["conv"].status == "float" and "kept float by --keep-first" in u["conv"].notes
    assert u["fc"].status != "float" and u["fc"].weight_format == "e4m3"


def test_embedding_gather_weights_only_and_index_gather_ignored():
    table = np.arange(20, dtype=np.float32).reshape(5, 4)
    m = B.model([helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
                 helper.make_node("Shape", ["emb"], ["shp"], name="shape"),
                 helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather_dim")],
                [B.vi("ids", [3], onnx.TensorProto.INT64)],
                [B.vi("emb", [3, 4]), B.vi("n", [], onnx.TensorProto.INT64)],
                [B.init("table", table), B.init("zero", np.array(0, np.int64))])
    plan = plan_quantization(m, Recipe())
    u = units(plan)
    assert u["embed"].status == "weights only" and [(w.tensor, w.axis) for w in u["embed"].weight_uses] == [("table", 0)]
    assert plan.float_nodes == []  # the Gather on a shape is no embedding: no line in the report
    # a Gather on a float table that is not constant is reported with its reason
    m.graph.input.append(B.vi("table2", [5, 4]))
    m.graph.node.append(helper.make_node("Gather", ["table2", "ids"], ["emb2"], name="embed2"))
    m.graph.output.append(B.vi("emb2", [3, 4]))
    (f,) = plan_quantization(m, Recipe()).float_nodes
    assert f.node == "embed2" and "table 'table2' is not constant" in f.reason


def test_conv_silu_is_one_unit_so_extended_does_not_split_it():
    r = B.rng()
    m = B.model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
                 helper.make_node("Mul", ["c", "s"], ["y"], name="silu")],
                [B.vi("x", [1, 2, 4, 4])], [B.vi("y", [1, 2, 4, 4])],
                [B.init("w", r.normal(size=(2, 2, 1, 1)).astype(np.float32))])
    plan = plan_quantization(m, Recipe(scheme="extended"))
    assert [(u.unit, sorted(u.nodes)) for u in plan.units] == [("conv_silu", ["conv", "sig", "silu"])]


def test_match_requires_internal_tensors_private():
    # conv output also read outside the would-be unit: the Conv+Relu unit must not form
    r = B.rng()
    m = B.model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Relu", ["c"], ["y"], name="relu")],
                [B.vi("x", [1, 2, 4, 4])], [B.vi("y", [1, 2, 4, 4]), B.vi("c", [1, 2, 4, 4])],
                [B.init("w", r.normal(size=(2, 2, 1, 1)).astype(np.float32))])
    u = units(plan_quantization(m, Recipe()))
    assert u["conv"].unit == "conv" and u["conv"].nodes == ["conv"]


def test_commutative_and_shared_variable_matching():
    p = Pattern("sq_plus", "mul", (PNode("mul", ("Mul",), ("$x", "$x")),
                                   PNode("add", ("Add",), ("%mul", "#c"), commutative=True)))
    m = B.model([helper.make_node("Mul", ["a", "a"], ["sq"], name="mul"),
                 helper.make_node("Add", ["c", "sq"], ["y"], name="add"),
                 helper.make_node("Mul", ["a", "b"], ["ab"], name="mul2"),
                 helper.make_node("Add", ["ab", "c"], ["z"], name="add2")],
                [B.vi("a", [2]), B.vi("b", [2])], [B.vi("y", [2]), B.vi("z", [2])],
                [B.init("c", np.ones(2, np.float32))])
    idx = GraphIndex(m.graph)
    (hit,) = list(match_at(p, m.graph.node[1], idx))
    assert hit.vars == {"x": "a", "c": "c"} and hit.anchor.name == "mul"
    assert list(match_at(p, m.graph.node[3], idx)) == []  # Mul(a, b): x bound twice to different tensors


def test_pattern_definition_errors():
    with pytest.raises(ValueError, match="unknown node"):
        Pattern("bad", "a", (PNode("a", ("Relu",), ("%nope",)),))
    with pytest.raises(ValueError, match="anchor"):
        Pattern("bad", "zz", (PNode("a", ("Relu",), ()),))


def test_schemes_are_tables_and_extended_contains_standard():
    std, ext = schemes.get("standard"), schemes.get("extended")
    assert ext.units[: len(std.units)] == std.units
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather", "LSTM", "GRU", "RNN"} == set(std.anchor_ops)
    assert "Softmax" not in ext.anchor_ops
    d = ext.to_dict()
    assert d["units"]["conv"]["weights"] == {"w": 0} and d["units"]["gemm"]["weights"] == {"w": "gemm_b"}
    assert d["units"]["lstm"]["weights"] == d["units"]["gru"]["weights"] == {"w": 1, "r": 1}
    with pytest.raises(ValueError, match="choose one of standard, extended"):
        schemes.get("fancy")


def test_subgraph_units_are_weights_only():
    r = B.rng()
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_then"], ["t_out"], name="then_mm")], "then", [], [B.vi("t_out", [2, 3])],
        [B.init("w_then", r.normal(size=(4, 3)).astype(np.float32))])
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_else"], ["e_out"], name="else_mm")], "else", [], [B.vi("e_out", [2, 3])],
        [B.init("w_else", r.normal(size=(4, 3)).astype(np.float32))])
    m = B.model([helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)],
                [B.vi("cond", [], onnx.TensorProto.BOOL), B.vi("x", [2, 4])], [B.vi("y", [2, 3])])
    plan = plan_quantization(m, Recipe())
    u = units(plan)
    assert u["then_mm"].graph_path == "main/branch.then_branch"
    assert u["then_mm"].status == "weights only" and "subgraph" in u["then_mm"].notes[0]
    assert plan.activation_tensors() == []


def test_magnitude_is_one_unit_that_quantizes_its_operands_not_their_squares():
    """Sqrt(a^2 + b^2) (an STFT magnitude): extended quantizes a and b; the squares, with
    twice the dynamic range, stay float (E3M4 flushed 96% of Silero VAD's to zero)."""
    import fp8onnx
    from fp8onnx.evaluation import session_for

    two = B.init("two", np.array(2, np.float32))
    m = B.model([helper.make_node("Pow", ["re", "two"], ["p1"], name="pow_re"),
                 helper.make_node("Pow", ["im", "two"], ["p2"], name="pow_im"),
                 helper.make_node("Add", ["p1", "p2"], ["s"], name="power"),
                 helper.make_node("Sqrt", ["s"], ["y"], name="mag")],
                [B.vi("re", [64]), B.vi("im", [64])], [B.vi("y", [64])], [two])
    u = units(plan_quantization(m, Recipe(scheme="extended")))
    assert u["pow_re"].unit == "magnitude" and sorted(u["pow_re"].nodes) == ["mag", "pow_im", "pow_re", "power"]
    assert sorted({x.tensor for x in u["pow_re"].activation_uses}) == ["im", "re"]
    assert "power" not in u  # the Add is inside the unit, not an element-wise unit of its own
    # numerically: the FP8 model is sqrt(fq(re)^2 + fq(im)^2) with fq the E3M4 fake quant
    r = B.rng(1)
    feeds = [{"re": (r.normal(size=64) * 10 ** r.uniform(-3, 1, 64)).astype(np.float32),
              "im": (r.normal(size=64) * 10 ** r.uniform(-3, 1, 64)).astype(np.float32)} for _ in range(4)]
    q = fp8onnx.compile(m, calibration=feeds, format="e3m4", scheme="extended", emit="emulate")
    from fp8onnx.kernels import fake_quant
    amax = {k: max(float(np.abs(f[k]).max()) for f in feeds) for k in ("re", "im")}
    fq = lambda x, k: fake_quant("e3m4", x, np.float32(amax[k] / 30.0))  # noqa: E731  E3M4 max = 30
    want = np.sqrt(fq(feeds[0]["re"], "re") ** 2 + fq(feeds[0]["im"], "im") ** 2)
    got = session_for(q).run(None, feeds[0])[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


def test_decomposed_hardswish_is_one_float_unit_in_extended():
    r = B.rng()
    m = B.model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                 helper.make_node("Add", ["c", "three"], ["a"], name="hs_add"),
                 helper.make_node("Clip", ["a", "zero", "six"], ["cl"], name="hs_clip"),
                 helper.make_node("Mul", ["c", "cl"], ["mm"], name="hs_mul"),
                 helper.make_node("Div", ["mm", "six"], ["y"], name="hs_div")],
                [B.vi("x", [1, 2, 4, 4])], [B.vi("y", [1, 2, 4, 4])],
                [B.init("w", r.normal(size=(2, 2, 1, 1)).astype(np.float32)),
                 B.init("three", np.array(3, np.float32)), B.init("zero", np.array(0, np.float32)),
                 B.init("six", np.array(6, np.float32))])
    u = units(plan_quantization(m, Recipe(scheme="extended")))
    assert u["hs_add"].unit == "hardswish" and u["hs_add"].status == "float"
    assert sorted(u["hs_add"].nodes) == ["hs_add", "hs_clip", "hs_div", "hs_mul"]
    assert u["conv"].status == "quantized"


def test_initializer_listed_as_graph_input_is_not_a_constant_weight():
    # older exporters list weights as inputs: a caller may feed another value, so no FP8 copy
    m = B.conv_relu_gemm()
    m.graph.input.append(B.vi("fc.w", [10, 256]))
    plan = plan_quantization(m, Recipe())
    (f,) = [f for f in plan.float_nodes if f.node == "fc"]
    assert "graph input that callers may override" in f.reason


def test_extended_skips_what_deployment_fuses_into_a_conv():
    # Paddle writes Conv -> Add(bias) and Conv -> BatchNormalization; onnxruntime and
    # TensorRT fuse both into the Conv, so the raw Conv output is no quantization point.
    # The same ops fed by anything else stay units of the extended scheme.
    r = B.rng()
    w = lambda name: B.init(name, r.normal(size=(2, 2, 1, 1)).astype(np.float32))
    bn = [B.init(f"bn.{k}", v) for k, v in (("s", np.ones(2, np.float32)), ("b", np.zeros(2, np.float32)),
                                              ("m", np.zeros(2, np.float32)), ("v", np.ones(2, np.float32)))]
    bias = B.init("bias", r.normal(size=(1, 2, 1, 1)).astype(np.float32))
    m = B.model([helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
                 helper.make_node("Add", ["c1", "bias"], ["b1"], name="bias_add"),
                 helper.make_node("Conv", ["b1", "w2"], ["c2"], name="conv2"),
                 helper.make_node("BatchNormalization", ["c2", "bn.s", "bn.b", "bn.m", "bn.v"], ["n2"], name="bn_conv"),
                 helper.make_node("Add", ["n2", "b1"], ["r"], name="residual"),
                 helper.make_node("BatchNormalization", ["r", "bn.s", "bn.b", "bn.m", "bn.v"], ["n3"], name="bn_alone"),
                 helper.make_node("Conv", ["n3", "w3"], ["c3"], name="conv3"),
                 helper.make_node("Add", ["c3", "bias"], ["y"], name="shared_add"),
                 helper.make_node("Relu", ["c3"], ["z"], name="relu")],
                [B.vi("x", [1, 2, 4, 4])], [B.vi("y", [1, 2, 4, 4]), B.vi("z", [1, 2, 4, 4])],
                [w("w1"), w("w2"), w("w3"), bias] + bn)
    plan = plan_quantization(m, Recipe(scheme="extended"))
    u = units(plan)
    reasons = {f.node: f.reason for f in plan.float_nodes}
    assert "bias_add" not in u and "constant bias to a Conv" in reasons["bias_add"]
    assert "bn_conv" not in u and "follows a Conv" in reasons["bn_conv"]
    acts = lambda node: sorted(a.tensor for a in u[node].activation_uses)
    assert acts("residual") == ["b1", "n2"]
    assert acts("bn_alone") == ["r"]
    # c3 is also read by the Relu: no single node takes the bias, so the Add stays a unit
    assert acts("shared_add") == ["c3"]
    # the standard scheme never had these units
    std = units(plan_quantization(m, Recipe()))
    assert not {"bias_add", "bn_conv", "residual", "bn_alone", "shared_add"} & set(std)


def test_recipe_switches_take_bools_only():
    """A JSON string "false" would read as true in Python: switches take true/false (also
    numpy bools and 0/1 from Python code, stored as bools) and refuse anything else."""
    r = Recipe.from_dict({"keep_first": 1, "saturate": np.bool_(True), "pow2_scales": False})
    assert (r.keep_first, r.saturate, r.pow2_scales) == (True, True, False)
    assert all(type(getattr(r, k)) is bool for k in ("keep_first", "saturate", "pow2_scales"))
    for key, bad in (("pow2_scales", "false"), ("bn_calib", 2), ("dynamic", None)):
        with pytest.raises(UserError, match=f"recipe key '{key}' must be true or false"):
            Recipe.from_dict({key: bad})
