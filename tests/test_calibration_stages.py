"""Stage cuts, the cut store and paired channel moments against independent references.

Stages are checked by running them one after another in onnxruntime (optimisations off)
and comparing every measured tensor with the whole model's own value; moments against
float64 numpy on all the data at once.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_builders as B
from fp8onnx.calibration.moments import ChannelMoments, PairMoments
from fp8onnx.calibration.stages import CutStore, plan_stages


def _branchy():
    """x -> c1 -> r1 -> {c2a, c2b}; c2a -> r2a; add(r2a, c2b) -> c3; c3 + r1 (a skip) -> c4."""
    r = B.rng(7)
    w = {n: r.normal(0, 0.3, s).astype(np.float32) for n, s in
         (("w1", (4, 3, 3, 3)), ("w2a", (4, 4, 3, 3)), ("w2b", (4, 4, 1, 1)), ("w3", (4, 4, 3, 3)),
          ("w4", (2, 4, 1, 1)))}
    pad = dict(pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", **pad),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2a"], ["c2a"], name="c2a", **pad),
             helper.make_node("Relu", ["c2a"], ["r2a"], name="r2a"),
             helper.make_node("Conv", ["r1", "w2b"], ["c2b"], name="c2b"),
             helper.make_node("Add", ["r2a", "c2b"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "w3"], ["c3"], name="c3", **pad),
             helper.make_node("Add", ["c3", "r1"], ["s2"], name="skip"),
             helper.make_node("Conv", ["s2", "w4"], ["c4"], name="c4"),
             helper.make_node("Sigmoid", ["c4"], ["y"], name="sig")]
    m = B.model(nodes, [B.vi("x", ["N", 3, 8, 8])], [B.vi("y", ["N", 2, 8, 8])],
                [B.init(k, v) for k, v in w.items()])
    return m, ["c1", "c2a", "c2b", "c3", "c4"]


def _run(model, outputs, feed):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip(outputs, sess.run(outputs, feed)))


def test_stages_run_one_after_another_give_the_whole_models_tensors():
    m, outs = _branchy()
    stages = plan_stages(m.graph, outs)
    assert [s.out for s in stages] == outs
    # every node needed by a measured tensor is in exactly one stage; the last Sigmoid in none
    assigned = [i for s in stages for i in s.nodes]
    assert len(assigned) == len(set(assigned)) == len(m.graph.node) - 1
    assert [m.graph.node[i].name for i in stages[1].nodes] == ["r1", "c2a"]
    assert stages[0].feeds == ["x"] and all(not s.feeds for s in stages[1:])
    assert stages[0].keep == ["c1"] and stages[1].keep == ["c2a", "r1"]
    assert stages[2].inputs == ["r1"] and stages[3].inputs == ["c2a", "c2b"] and stages[4].inputs == ["c3", "r1"]
    assert stages[4].free == ["c3", "r1"] and "r1" not in stages[2].free  # the skip reads it last
    x = B.rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    whole = _run(m, outs, {"x": x})
    inits = {t.name: t for t in m.graph.initializer}
    values = {"x": x}
    for s in stages:
        nodes = [m.graph.node[i] for i in s.nodes]
        g = helper.make_graph(
            nodes, "stage", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in s.feeds + s.inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in sorted(set(s.keep) | {s.out})],
            [inits[i] for n in nodes for i in n.input if i in inits])
        sub = helper.make_model(g, opset_imports=m.opset_import)
        got = _run(sub, sorted(set(s.keep) | {s.out}), {n: values[n] for n in s.feeds + s.inputs})
        np.testing.assert_array_equal(got[s.out], whole[s.out], err_msg=s.out)
        values.update(got)


def test_stages_need_graph_order():
    m, outs = _branchy()
    with pytest.raises(ValueError, match="earlier stage"):
        plan_stages(m.graph, ["c3", "c1"])
    with pytest.raises(ValueError, match="produced by no node"):
        plan_stages(m.graph, ["nope"])


@pytest.mark.parametrize("budget", [0, 1 << 30, 1500])  # 480 bytes an array
def test_cut_store_returns_what_was_put_in_memory_or_on_disk(budget):
    r = B.rng(2)
    arrays = {(k, i): r.normal(size=(1, 4, 5, 6)).astype(np.float32) for k in ("a", "b") for i in range(3)}
    with CutStore(budget) as store:
        for (k, i), v in arrays.items():
            store.put(k, i, v)
        assert store.in_memory <= budget and store.peak <= budget
        spilled_dir = store._dir
        if budget == 0:
            assert store.spilled == 6 and len(os.listdir(spilled_dir)) == 6
            assert store.on_disk == store.peak_disk == 6 * 480
        elif budget > 1 << 20:
            assert store.spilled == 0 and spilled_dir is None and store.peak_disk == 0
        else:
            assert 0 < store.spilled < 6 and store.peak_disk == store.spilled * 480
        for (k, i), v in arrays.items():
            np.testing.assert_array_equal(store.get(k, i), v)
        store.drop("a", 0)
        with pytest.raises(KeyError):
            store.get("a", 0)
        if budget == 0:
            assert len(os.listdir(spilled_dir)) == 5
            assert store.on_disk == 5 * 480 and store.peak_disk == 6 * 480
    assert spilled_dir is None or not os.path.exists(spilled_dir)


def test_pair_moments_match_numpy_on_all_the_data():
    r = B.rng(3)
    # large means against the spread (the float64 sums must not cancel), batches of other sizes
    batches = [(r.normal(size=(n, 3, h, 5)) * [[[[0.01]], [[1.0]], [[100.0]]]] + [[[[1e3]], [[-5]], [[0]]]]
                ).astype(np.float32) for n, h in ((2, 4), (1, 7), (3, 1))]
    pairs = [(a, (a * 0.9 + r.normal(size=a.shape) * 0.05).astype(np.float32)) for a in batches]
    pm = PairMoments(3)
    single = ChannelMoments(3)
    for a, b in pairs:
        pm.update(a, b)
        single.update(a)
    flat = [np.concatenate([p[k].transpose(1, 0, 2, 3).reshape(3, -1) for p in pairs], axis=1).astype(np.float64)
            for k in (0, 1)]
    np.testing.assert_allclose(pm.mean_a, flat[0].mean(1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(pm.var_a, flat[0].var(1), rtol=1e-6)
    np.testing.assert_allclose(pm.var_b, flat[1].var(1), rtol=1e-6)
    # ChannelMoments centres on a float32 mean: 1.5e-6 off where the mean is 1e5 std
    np.testing.assert_allclose(single.var, flat[0].var(1), rtol=1e-5)
    ga, ha, gb, hb = (r.normal(size=3) for _ in range(4))
    ref = np.mean((ga[:, None] * flat[0] + ha[:, None] - gb[:, None] * flat[1] - hb[:, None]) ** 2)
    assert pm.mse(ga, ha, gb, hb) == pytest.approx(ref, rel=1e-6)
    assert pm.mse(1, 0, 1, 0) == pytest.approx(np.mean((flat[0] - flat[1]) ** 2), rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        pm.update(batches[0], batches[1])
    nan = batches[0].copy()
    nan[0, 1, 0, 0] = np.nan
    bad = PairMoments(3)
    bad.update(nan, nan)
    assert np.isnan(bad.mean_a[1]) and np.isfinite(bad.mean_a[0])
