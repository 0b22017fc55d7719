"""modelio: every refused input names its problem; saving is atomic, deterministic, round-trips."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp8onnx import modelio
from fp8onnx.errors import UserError
from fp8onnx.modelio import ModelFileError, load_model, save_model


def _model(n=32, seed=0):
    """X[1,n] -> MatMul(W[n,n]) -> Add(b[n]) -> Y, with 4 KB of weights."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["Y"], name="add")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], producer_name="test")
    m.ir_version = 9
    m.metadata_props.add(key="k", value="v")
    return m


def _run(model_or_path, x):
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


def _save_plain(model, path):
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


# ---------------------------------------------------------------------- load errors

def test_load_path_and_bytes_and_proto(tmp_path):
    m = _model()
    p = _save_plain(m, tmp_path / "m.onnx")
    assert load_model(p) == m
    assert load_model(open(p, "rb").read()) == m
    assert load_model(m) is m


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"model file .*nope.onnx' not found; check the path"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory; pass the .onnx file inside it"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\nwith two lines\n",
        b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8)),
        b"",
    ],
    ids=["text", "png", "empty"],
)
def test_not_onnx(tmp_path, content):
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match="truncated or not an ONNX model|is empty"):
        load_model(p)
    assert issubclass(ModelFileError, UserError)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated(tmp_path, fraction):
    data = _model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match=r"cut.onnx' is truncated or not an ONNX model"):
        load_model(p)


def test_truncated_at_field_boundary(tmp_path):
    # A cut right after the graph parses cleanly; the missing opset_import gives it away.
    m = _model()
    stripped = onnx.ModelProto()
    stripped.CopyFrom(m)
    del stripped.opset_import[:]
    del stripped.metadata_props[:]
    data = stripped.SerializeToString()
    assert m.SerializeToString().startswith(data)  # it is a prefix of the real file
    p = tmp_path / "cut.onnx"
    p.write_bytes(data)
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(p)


def test_no_graph_inputs(tmp_path):
    m = _model()
    # Every input is an initializer: the model computes a constant.
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 32), np.float32), "X"))
    p = _save_plain(m, tmp_path / "const.onnx")
    with pytest.raises(ModelFileError, match=r"const.onnx' has no graph inputs .*export it with its real inputs"):
        load_model(p)
    del m.graph.input[:]
    with pytest.raises(ModelFileError, match="has no graph inputs"):
        load_model(m.SerializeToString())


def _external(tmp_path, location):
    m = _model()
    w = m.graph.initializer[0]
    raw = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        w.external_data.add(key=k, value=v)
    return m, raw


def test_missing_external_data(tmp_path):
    m, _ = _external(tmp_path, "weights.bin")
    p = _save_plain(m, tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match=rf"external data file 'weights.bin' of tensor 'W' not found in folder '{tmp_path}'"):
        load_model(p)
    # Without loading the data the model is usable as a structure.
    assert load_model(p, load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL


def test_short_external_data(tmp_path):
    m, raw = _external(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(raw[:100])
    p = _save_plain(m, tmp_path / "m.onnx")
    with pytest.raises(ModelFileError, match="is shorter than tensor 'W' needs"):
        load_model(p)


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_external_data_outside_folder_is_refused(tmp_path, monkeypatch, kind):
    inner = tmp_path / "model"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    location = "../secret.bin" if kind == "dotdot" else str(secret)
    m, raw = _external(tmp_path, location)
    secret.write_bytes(raw)  # the file exists: it must still not be read
    p = _save_plain(m, inner / "m.onnx")

    def no_read(*a, **k):
        raise AssertionError("external data outside the folder was read")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", no_read)
    with pytest.raises(ModelFileError, match=r"points to external data .*secret.bin' outside the model's folder.*refusing to read it"):
        load_model(p)
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        load_model(p, load_external_data=False)


def test_load_never_modifies_the_file(tmp_path):
    m = _model()
    p = tmp_path / "m.onnx"
    save_model(m, p, external_data=True)
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    load_model(p)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before


# ---------------------------------------------------------------------- save

def test_save_inline_roundtrip_and_determinism(tmp_path):
    m = _model()
    save_model(m, tmp_path / "a.onnx")
    save_model(m, tmp_path / "b.onnx")
    a, b = (tmp_path / "a.onnx").read_bytes(), (tmp_path / "b.onnx").read_bytes()
    assert a == b
    assert load_model(tmp_path / "a.onnx") == m
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx"]  # no temp files left


def test_save_external_roundtrip(tmp_path):
    m = _model(64)  # W is 16 KB: goes external; b (256 B) stays inline
    before = m.SerializeToString()
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    ref = _run(m, x)
    p = str(tmp_path / "out.onnx")
    save_model(m, p, external_data=True)
    assert m.SerializeToString() == before  # caller's model unchanged
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    assert os.path.getsize(p) < 1500 and os.path.getsize(p + ".data") >= 64 * 64 * 4
    raw = onnx.load(p, load_external_data=False)
    assert raw.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert raw.graph.initializer[1].data_location == TensorProto.DEFAULT
    loaded = load_model(p)
    np.testing.assert_array_equal(_run(loaded, x), ref)
    np.testing.assert_array_equal(_run(p, x), ref)  # onnxruntime reads our external layout
    assert [(t.name, t.raw_data) for t in loaded.graph.initializer] == [(t.name, t.raw_data) for t in m.graph.initializer]
    # Deterministic: saving again gives the same bytes in both files.
    files = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    save_model(m, p, external_data=True)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == files


def test_external_data_chosen_automatically_by_size(tmp_path, monkeypatch):
    m = _model()
    monkeypatch.setattr(modelio, "INLINE_LIMIT", 1000)
    save_model(m, tmp_path / "big.onnx")
    assert os.path.exists(tmp_path / "big.onnx.data")
    save_model(m, tmp_path / "forced_inline.onnx", external_data=False)
    assert not os.path.exists(tmp_path / "forced_inline.onnx.data")
    assert modelio.tensor_bytes(m) == 32 * 32 * 4 + 32 * 4


def test_save_refuses_input_path(tmp_path):
    m = _model()
    p = _save_plain(m, tmp_path / "in.onnx")
    original = open(p, "rb").read()
    link = tmp_path / "link.onnx"
    os.symlink(p, link)
    for target in (p, str(link), str(tmp_path / "." / "in.onnx")):
        with pytest.raises(ModelFileError, match="is the input model; choose a different output path"):
            save_model(m, target, input_path=p)
    assert open(p, "rb").read() == original


def test_save_refuses_missing_or_readonly_folder(tmp_path, monkeypatch):
    m = _model()
    with pytest.raises(ModelFileError, match=r"output folder .*nodir' does not exist; create it first"):
        save_model(m, tmp_path / "nodir" / "m.onnx")
    with pytest.raises(ModelFileError, match="is a directory; give a file name"):
        save_model(m, tmp_path)
    # Tests run as root here, for whom chmod does not deny writing: ask os.access.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(ModelFileError, match="is not writable; choose another output path"):
        save_model(m, tmp_path / "m.onnx")


def test_save_refuses_unloaded_external_tensors(tmp_path):
    m, _ = _external(tmp_path, "w.bin")
    with pytest.raises(ModelFileError, match="load the model with load_model"):
        save_model(m, tmp_path / "o.onnx")


@pytest.mark.parametrize("external", [False, True])
def test_save_failure_leaves_nothing(tmp_path, monkeypatch, external):
    m = _model()
    before = m.SerializeToString()
    real = modelio._write_chunks
    calls = []

    def failing(tmp, chunks):
        calls.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modelio, "_write_chunks", failing)
    with pytest.raises(OSError, match="No space left"):
        save_model(m, tmp_path / "o.onnx", external_data=external)
    assert calls and os.listdir(tmp_path) == []  # no output, no .data, no temp file
    assert m.SerializeToString() == before  # weights put back after the failure
    # An existing output is left as it was.
    monkeypatch.setattr(modelio, "_write_chunks", real)
    save_model(m, tmp_path / "o.onnx", external_data=external)
    files = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    monkeypatch.setattr(modelio, "_write_chunks", failing)
    with pytest.raises(OSError):
        save_model(_model(seed=5), tmp_path / "o.onnx", external_data=external)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == files


def test_external_data_covers_constants_and_subgraph_initializers(tmp_path):
    # Large tensors outside the main initializers (a Constant node's value, an If
    # branch's initializer) go to the data file too, and the caller's model is untouched.
    rng = np.random.default_rng(4)
    big_c = rng.standard_normal(512).astype(np.float32)
    big_b = rng.standard_normal(512).astype(np.float32)
    branch = helper.make_graph([helper.make_node("Add", ["X", "B"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [512])],
                               [numpy_helper.from_array(big_b, "B")])
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [512])])
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["C"], value=numpy_helper.from_array(big_c)),
         helper.make_node("Mul", ["X", "C"], ["h"]),
         helper.make_node("If", ["cond"], ["i"], then_branch=branch, else_branch=other),
         helper.make_node("Add", ["h", "i"], ["Y"])],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [512]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [512])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    before = m.SerializeToString()
    p = str(tmp_path / "sub.onnx")
    save_model(m, p, external_data=True)
    assert m.SerializeToString() == before
    raw = onnx.load(p, load_external_data=False)
    kinds = [t.data_location for t in onnx.external_data_helper._get_all_tensors(raw)]
    assert kinds == [TensorProto.EXTERNAL, TensorProto.EXTERNAL]
    assert os.path.getsize(p + ".data") >= 2 * 512 * 4
    loaded = load_model(p)
    tensors = lambda model: [(t.name, t.raw_data) for t in onnx.external_data_helper._get_all_tensors(model)]
    assert tensors(loaded) == tensors(m)
    x = rng.standard_normal(512).astype(np.float32)
    sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"X": x, "cond": np.array(True)})[0], x * big_c + (x + big_b))


def test_external_data_symlink_escaping_the_folder_is_refused(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    m, raw = _external(tmp_path, "weights.bin")
    (tmp_path / "secret.bin").write_bytes(raw)
    os.symlink(tmp_path / "secret.bin", inner / "weights.bin")  # looks local, points outside
    p = _save_plain(m, inner / "m.onnx")
    with pytest.raises(ModelFileError, match="points to external data 'weights.bin' outside the model's folder"):
        load_model(p)


def _ppocr_path():
    import rapidocr_onnxruntime as rapidocr  # in the dev extra: must run, so no skip
    return os.path.join(os.path.dirname(rapidocr.__file__), "models", "ch_PP-OCRv4_det_infer.onnx")


def test_real_model_file_and_its_truncations(tmp_path):
    path = _ppocr_path()
    before = open(path, "rb").read()
    m = load_model(path)
    assert m == onnx.load(path)
    assert open(path, "rb").read() == before
    for fraction in (0.5, 0.1, 0.999):
        cut = tmp_path / f"cut_{fraction}.onnx"
        cut.write_bytes(before[: int(len(before) * fraction)])
        with pytest.raises(ModelFileError, match="is truncated or not an ONNX model"):
            load_model(cut)


def test_save_refuses_to_overwrite_the_inputs_external_data(tmp_path):
    m = _model(64)
    save_model(m, tmp_path / "in.onnx", external_data=True)  # writes in.onnx.data
    loaded = load_model(tmp_path / "in.onnx")
    # The input is now other.onnx, whose weights live in in.onnx.data: saving to in.onnx
    # with external data would replace that file.
    os.rename(tmp_path / "in.onnx", tmp_path / "other.onnx")
    data = (tmp_path / "in.onnx.data").read_bytes()
    with pytest.raises(ModelFileError, match="would overwrite 'in.onnx.data', the input model's external data"):
        save_model(loaded, tmp_path / "in.onnx", external_data=True, input_path=tmp_path / "other.onnx")
    assert (tmp_path / "in.onnx.data").read_bytes() == data
    save_model(loaded, tmp_path / "out.onnx", external_data=True, input_path=tmp_path / "other.onnx")
    assert load_model(tmp_path / "out.onnx") == loaded


def test_saved_file_gets_the_users_default_mode(tmp_path):
    import os
    import onnx
    from onnx import helper, TensorProto
    from fp8onnx.modelio import save_model

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    out = tmp_path / "m.onnx"
    save_model(helper.make_model(g), out)
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)
    onnx.checker.check_model(str(out))
