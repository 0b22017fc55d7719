"""The mtcnn_onet zoo entry: facenet-pytorch's MTCNN (its three state dicts, rebuilt and
exported with torch), the O-Net quantized inside the FP32 P-Net/R-Net cascade.

The independent references: facenet_pytorch's own PNet/RNet/ONet modules and its own
``detect_face`` (imported with stand-ins for torchvision, which cannot import beside this
CPU torch: ``batched_nms`` by a small pure-torch NMS written here, the transforms module
empty, as ``detect_face`` needs it only in ``extract_face``); where the LFW crops were
pasted in the mosaics; scikit-image's LBP cascade (OpenCV's frontal-face model) for the
faces in the photos."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest

from fp8onnx import zoo
from fp8onnx.zoo import mtcnn as mt
from fp8onnx.zoo import mtcnn_cascade as mc
from fp8onnx.zoo.yolo import box_iou
from fp8onnx.zoo.facts import describe
from fp8onnx.zoo.fp8eval import fp8_vs_fp32
from fp8onnx.zoo.photos import skimage_data_dir

ZOO_ENTRY = "mtcnn_onet"   # the conftest fixtures entry and fp32 read it


def _batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms: greedy by falling score, IoU > threshold suppresses
    within a class, areas without the +1 pixel."""
    import torch

    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    gone = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for rank, i in enumerate(order.tolist()):
        if gone[i]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        iou = w * h / (area[i] + area[rest] - w * h)
        gone[rest[(iou > iou_threshold) & (idxs[rest] == idxs[i])]] = True
    return torch.as_tensor(keep, dtype=torch.long)


@pytest.fixture(scope="module")
def facenet():
    """facenet_pytorch.models.mtcnn and its detect_face module, torchvision stood in; the
    package's modules leave sys.modules again afterwards (they hold the stand-ins)."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("facenet_pytorch") is None:
        pytest.skip(f"install {mt.HINT}")
    ops = types.ModuleType("torchvision.ops.boxes")
    ops.batched_nms = _batched_nms
    stubs = {"torchvision": types.ModuleType("torchvision"), "torchvision.ops": types.ModuleType("torchvision.ops"),
             "torchvision.ops.boxes": ops, "torchvision.transforms": types.ModuleType("torchvision.transforms"),
             "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional")}
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stubs.items():
            mp.setitem(sys.modules, name, module)
        models = importlib.import_module("facenet_pytorch.models.mtcnn")
        detect = importlib.import_module("facenet_pytorch.models.utils.detect_face")
        yield types.SimpleNamespace(nets={n: getattr(models, n.upper()[0] + n[1:].capitalize())().eval()
                                          for n in mt.NETS}, detect_face=detect.detect_face)
    for name in set(sys.modules) - before:
        if name.startswith("facenet_pytorch"):
            del sys.modules[name]


def test_graph_and_weights(entry):
    """O-Net: 4 Conv + 4 Gemm with PReLU, and about three quarters of MTCNN's weights."""
    torch = pytest.importorskip("torch")
    info = describe(entry.load())
    assert info["ops"] == {"Conv": 4, "PRelu": 5, "MaxPool": 3, "Transpose": 1, "Flatten": 1, "Gemm": 4,
                           "Softmax": 1}
    sizes = {net: sum(p.numel() for p in mt.load_torch_model(torch, net).parameters()) for net in mt.NETS}
    assert info["initializer_params"] == sizes["onet"] == 389_040
    assert 0.7 < sizes["onet"] / sum(sizes.values()) < 0.85   # measured 0.79


def test_exports_equal_facenet_pytorch_nets(entry, fp32, facenet):
    """Each ONNX export gives facenet_pytorch's own module's outputs on real inputs: a
    pyramid level of the astronaut for P-Net, 24 x 24 and 48 x 48 windows of it."""
    import torch

    rgb = mt.images("eval")[1]
    integral = mc.integral_image(rgb)
    level = mc.normalize(mc.area_resize(integral, 0, 512, 0, 512, (154, 131)))
    windows = [(y, y + s, x, x + s) for y, x, s in ((60, 180, 110), (0, 0, 512), (300, 10, 37), (200, 300, 64))]
    inputs = {"pnet": level,
              "rnet": np.concatenate([mc.normalize(mc.area_resize(integral, *w, (24, 24))) for w in windows]),
              "onet": np.concatenate([mc.normalize(mc.area_resize(integral, *w, (48, 48))) for w in windows]
                                     + [next(entry.calib_feeds(16))[mc.INPUT]])}
    cascade = entry.cascade()
    sessions = {"pnet": cascade.pnet, "rnet": cascade.rnet, "onet": fp32}
    for net, x in inputs.items():
        with torch.no_grad():
            want = [y.numpy() for y in facenet.nets[net](torch.from_numpy(x))]
        got = sessions[net].run(list(mc.OUTPUTS[net]), {mc.INPUT: x})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-5, err_msg=net)


def test_cascade_equals_detect_face(entry, fp32, facenet):
    """facenet_pytorch's detect_face (default MTCNN settings, its own nets) and the numpy
    cascade with the ONNX nets find the same boxes, scores and landmarks (measured max
    difference 6e-5 px) on a face mosaic, the astronaut and the cameraman (whose crops
    include one O-Net scores 0.756, near the 0.7 threshold)."""
    import torch

    for rgb in mt.images("eval")[:4:3] + mt.images("eval")[1:2]:
        with torch.no_grad():
            boxes, points = facenet.detect_face(np.array(rgb), mc.MIN_FACE, facenet.nets["pnet"],
                                                facenet.nets["rnet"], facenet.nets["onet"],
                                                list(mc.THRESHOLDS), mc.FACTOR, "cpu")
        want_boxes = np.asarray(boxes[0], np.float32).reshape(-1, 5)
        want_points = np.asarray(points[0], np.float32).reshape(-1, 5, 2)
        got_boxes, got_points = entry.cascade().detect(rgb, fp32)
        assert len(want_boxes) > 0 and got_boxes.shape == want_boxes.shape
        np.testing.assert_allclose(got_boxes, want_boxes, atol=2e-3)
        np.testing.assert_allclose(got_points, want_points, atol=2e-3)


def test_area_resize_is_adaptive_average_pooling():
    """torch's interpolate(mode="area"), shrinking and enlarging, on a region of a photo."""
    torch = pytest.importorskip("torch")
    rgb = mt.images("eval")[3]
    for region, size in (((0, 512, 0, 512), (361, 257)), ((101, 150, 33, 70), (48, 48)), ((5, 29, 9, 20), (24, 24))):
        y0, y1, x0, x1 = region
        crop = torch.from_numpy(rgb[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(crop, size=size, mode="area").numpy()
        np.testing.assert_allclose(mc.area_resize(mc.integral_image(rgb), *region, size), want, rtol=1e-6)


def test_fp32_finds_the_faces_where_they_are(entry, fp32):
    """One box per LFW mosaic tile, on the pasted crop; none on the non-face mosaic; the
    astronaut's and Grace Hopper's faces where scikit-image's LBP cascade finds them."""
    from skimage.feature import Cascade

    dets = entry.detect(fp32, entry.default_eval_n)
    for i, start in enumerate(mt.MOSAICS["eval"][:3]):
        found = mt.detections(dets[2 * i][0])
        assert len(found) == 16
        for x, y, side in mt.tile_faces(start):
            overlaps = sorted(box_iou([x, y, side, side], d["box"]) for d in found)
            assert overlaps[-1] >= 0.45 and overlaps[-2] == 0, (start, x, y, overlaps[-2:])  # measured >= 0.51
    assert len(dets[6][0]) == 0   # LFW non-faces 148-163
    lbp = Cascade(str(skimage_data_dir() / "lbpcascade_frontalface_opencv.xml"))
    for rgb, (boxes, points) in ((mt.images("eval")[1], dets[1]),
                                 (mt.images("calib")[1], entry.cascade().detect(mt.images("calib")[1], fp32))):
        (face,) = lbp.detect_multi_scale(img=rgb, scale_factor=1.2, step_ratio=1, min_size=(60, 60),
                                        max_size=(200, 200))
        (det,) = mt.detections(boxes)
        assert det["score"] > 0.99
        # MTCNN's boxes reach from brow to chin, LBP's are tighter squares: the LBP face must
        # lie within ours (measured 0.94 and 1.0 of it), ours not be much larger (1.1x, 2.2x).
        x, y, w, h = det["box"]
        inside = (max(0, min(x + w, face["c"] + face["width"]) - max(x, face["c"]))
                  * max(0, min(y + h, face["r"] + face["height"]) - max(y, face["r"])))
        assert inside >= 0.85 * face["width"] * face["height"], (det, face)
        assert w * h < 3 * face["width"] * face["height"], (det, face)
        (left_eye, right_eye, nose, left_mouth, right_mouth) = points[0]
        assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


def test_fp32_metric_and_what_it_counts(entry, fp32):
    """FP32 agrees with itself on the 50 faces (3 x 16 LFW, astronaut, cameraman); an
    O-Net that rejects half the crops of every image, or shifts its boxes sideways by 35%
    of their width (IoU 0.48), is caught."""
    assert entry.evaluate() == 1.0
    d = entry.last_details
    assert d["faces_fp32"] == d["faces"] == 50 and d["f1_iou75"] == 1.0 and d["landmark_error_max"] == 0.0

    class Damaged:
        def __init__(self, shift, drop):
            self.shift, self.drop = shift, drop

        def run(self, names, feeds):
            reg, marks, prob = fp32.run(names, feeds)
            prob = prob.copy()
            if self.drop:
                prob[:len(prob) // 2, 1] = 0   # proposals are in falling R-Net score
            return [reg + self.shift, marks, prob]

    lost = entry.evaluate(session_factory=lambda _: Damaged(0.0, True))
    assert 0.5 < lost < 1.0 and entry.last_details["faces"] < 50   # measured 0.90, 41 faces
    shifted = entry.evaluate(session_factory=lambda _: Damaged(np.float32([0.35, 0, 0.35, 0]), False))
    assert shifted < 0.05 and np.isnan(entry.last_details["landmark_error_mean"])   # nothing matched


def test_splits_are_disjoint_and_feeds_real_crops(entry):
    evals, calibs = mt.images("eval"), mt.images("calib")
    assert len(evals) == entry.default_eval_n and len(calibs) == 11
    assert not set(mt.EVAL_PHOTOS) & set(mt.CALIB_PHOTOS)
    crops = {split: {s + i for s in mt.MOSAICS[split] for i in range(16)} for split in mt.MOSAICS}
    assert not crops["eval"] & crops["calib"]
    assert all(not a.flags.writeable for a in evals + calibs)
    feeds = list(entry.calib_feeds(40))
    assert [f[mc.INPUT].shape for f in feeds] == [(16, 3, 48, 48), (16, 3, 48, 48), (8, 3, 48, 48)]
    x = np.concatenate([f[mc.INPUT] for f in feeds])
    assert x.dtype == np.float32 and -1 <= x.min() < -0.5 and 0.5 < x.max() <= 1
    proposed = [c for _, c in entry.proposals("calib", len(calibs))]
    # Taken in turn: the first crops come from every image that proposes one.
    sources = {i for crop in x[:8] for i, c in enumerate(proposed) if any(np.array_equal(crop, p) for p in c)}
    assert len(sources) >= 6, sources
    shapes = [f[mc.INPUT].shape for f in entry.eval_feeds(entry.default_eval_n)]
    assert len(shapes) == 6 and all(s[0] > 0 and s[1:] == (3, 48, 48) for s in shapes)   # 4 images propose none
    feeds_again = [f[mc.INPUT] for f in mt.MtcnnONetEntry().calib_feeds(40)]
    np.testing.assert_array_equal(np.concatenate(feeds_again), x)


def test_missing_package_skips(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real(name, *a))
    entry = zoo.get(ZOO_ENTRY)
    hint = r"skipped: install facenet-pytorch \(pip install --no-deps facenet-pytorch==2.6.0\)"
    with pytest.raises(zoo.ZooSkip, match=hint):
        entry.evaluate()


def test_e4m3_keeps_the_detections(entry):
    """E4M3 weights and activations, 32 calibration crops: every face kept (measured: F1 1.0
    at IoU 0.5 and 0.75), landmarks moved by 0.46% of the face size on average."""
    r = fp8_vs_fp32(entry, calib_n=32, format="e4m3")
    assert r["relative_loss"] <= 0.03, r
    d = r["details"]
    assert d["faces"] == d["faces_fp32"] == 50 and d["f1_iou75"] >= 0.95
    assert 0.001 < d["landmark_error_mean"] < 0.01 and d["landmark_error_max"] < 0.08, d


@pytest.mark.slow
def test_fp8_formats_rank_by_mantissa_bits(entry):
    """Detections survive every format; the landmark error orders them by mantissa bits
    (measured mean 0.0027, 0.0046, 0.011 of the face size for E3M4, E4M3, E5M2)."""
    runs = {fmt: fp8_vs_fp32(entry, calib_n=64, format=fmt) for fmt in ("e3m4", "e4m3", "e5m2")}
    err = {fmt: r["details"]["landmark_error_mean"] for fmt, r in runs.items()}
    for fmt, r in runs.items():
        assert r["relative_loss"] <= 0.03, (fmt, r)
    assert 0 < err["e3m4"] < 0.8 * err["e4m3"] and 1.5 * err["e4m3"] < err["e5m2"], err
