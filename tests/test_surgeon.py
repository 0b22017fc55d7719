"""GraphSurgeonPass: graphsurgeon-style passes that keep what fp8onnx wrote."""
import os

import numpy as np
import onnx
from onnx import TensorProto

import onnx_builders as B
import fp8onnx
from fp8onnx.passinfra import PassManager
from fp8onnx.surgeon import GraphSurgeonPass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "digits_cnn_bnfold.onnx")
CALIB = os.path.join(ROOT, "models", "data", "digits_calib.npz")


def insert_identity_after_input(graph):
    import onnx_graphsurgeon as gs

    x = graph.inputs[0]
    y = gs.Variable("input_copy", dtype=x.dtype, shape=x.shape)
    for node in [n for n in graph.nodes if x in n.inputs]:
        node.inputs = [y if t is x else t for t in node.inputs]
    graph.nodes.append(gs.Node("Identity", name="input_identity", inputs=[x], outputs=[y]))
    return True


def test_gs_pass_keeps_metadata_fnuz_types_and_results():
    q = fp8onnx.compile(CNN, calibration=CALIB, format="e4m3fnuz")
    x = {"input": np.load(CALIB)["input"][:16]}
    before = B.ort_run(q, x)
    types = {t.name: t.data_type for t in q.graph.initializer}
    meta = [(p.key, p.value) for p in q.metadata_props]
    res = PassManager([GraphSurgeonPass(insert_identity_after_input)])(q)
    assert res.modified
    m = res.model
    assert "input_identity" in {n.name for n in m.graph.node}
    assert [(p.key, p.value) for p in m.metadata_props] == meta
    assert {t.name: t.data_type for t in m.graph.initializer} == types
    assert TensorProto.FLOAT8E4M3FNUZ in types.values()
    onnx.checker.check_model(m, full_check=True)
    np.testing.assert_array_equal(B.ort_run(m, x), before)


def test_gs_pass_reporting_no_change_leaves_model_alone():
    m = B.conv_relu_gemm()
    data = m.SerializeToString()
    assert not GraphSurgeonPass(lambda g: False, name="noop")(m).modified
    assert m.SerializeToString() == data
