"""Speed of fp8onnx's custom ops inside an ONNX Runtime session, beside the alternatives.

Part 1, on N float32 elements (default 16M), one thread (plus a row with every core):
median ns/element of
``ai.fp8onnx.FakeQuant`` (E4M3, per tensor and per channel) in
``fp8onnx.runtime.InferenceSession``, onnxruntime's native QuantizeLinear ->
DequantizeLinear session, an Identity in each session (the cost of a session call that
writes a fresh output, the floor for any op), and a numpy copy (memory bandwidth).

Part 2, a small CNN (3 Conv + 2 MatMul) and a transformer-style MLP (8 MatMul): the float
model vs the same model with FakeQuant on every weight (per channel) and activation (per
tensor), vs the native FP8 QDQ model; medians and ratios to the float model. Timings are
taken round-robin so the noise of a shared machine falls on every variant alike.

Part 3 (``--zoo``), real CNNs of the zoo compiled with their calibration data: the float
model vs emulated E3M4 and E4M3 (``emit="emulate"``: FakeQuant activations, folded
weights; also E3M4 with ``blocked_fake_quant=False``, the FakeQuants reordered out of
and back into onnxruntime's NCHWc layout around every Conv, and E3M4 with power-of-two
scales, ``--pow2-scales``, where FakeQuant multiplies by the exact reciprocal) vs
onnxruntime's own E4M3 QDQ model (``emit="qdq"`` in an onnxruntime session, with the
FP8-unsafe rewrites off so that it computes the right thing), at 1 and 2 threads. Each
repeat runs every variant once, in turn, in an order rotated each repeat
(tools/_timing.py; several calls per sample for small models); the figure is the median
over repeats of time / float time of the same repeat. The float model also runs in
fp8onnx's session (``wall/float(fp8onnx)`` is relative to it): that session drives the
wheel's libonnxruntime, a second copy of ONNX Runtime beside the one linked into
onnxruntime's Python module, and alternating between the two cost it ~40 us per call on
the digits CNN (13 us when run alone). ``--profile`` adds each variant's Reorder node
count and the FakeQuant/Conv kernel time (onnxruntime profiler), and where FakeQuant's
time goes: ns per element on tensors of 256K elements or more (arithmetic: about 3x an
in-place ``x *= 1`` pass, ``tools/bench_kernels.py --activation-sizes``) and the time per
call on tensors under 1K elements (onnxruntime's per-node cost, as for its own tiny ops).

    python tools/bench_runtime.py            # 16M elements, 15 repeats
    python tools/bench_runtime.py --elements 4194304 --repeats 7
    python tools/bench_runtime.py --zoo --repeats 21          # only part 3, all CNNs
    python tools/bench_runtime.py --zoo ppocr_cls mobilenet_v2 --threads 1 --profile
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# tools/ holds scripts, not modules to import: keep its files from shadowing installed
# packages (a script there must not shadow what Numba imports).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper

from fp8onnx import formats
from fp8onnx.runtime import InferenceSession, ops


def _sibling(name):
    """tools/<name>.py, loaded by file path (once) as ``fp8onnx_tools_<name>``, the way the
    tools load each other."""
    import importlib.util

    key = f"fp8onnx_tools_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(_HERE, f"{name}.py"))
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


_timing = _sibling("_timing")


FMT = "e4m3"


def median_seconds(fns, repeats):
    """Median seconds of each callable over ``repeats`` rounds of one call each, in the
    shared timer's rotated order (tools/_timing.py), so that the noise of a shared machine
    and the slot after another callable fall on all of them alike."""
    for fn in fns:
        fn()  # warm up: compile, arena growth, first-touch page faults
    rounds = _timing.rotated_rounds(fns, repeats, inner=1)
    return [statistics.median(r[i][0] for r in rounds) for i in range(len(fns))]


def options(threads=1):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return so


def model(nodes, inits, inputs=("x",), opset=21):
    graph = helper.make_graph(nodes, "bench",
                              [helper.make_tensor_value_info(n, T.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset), ops.opset_import()])


def scale_init(name, values):
    values = np.atleast_1d(np.asarray(values, np.float32))
    shape = [] if values.size == 1 else [values.size]
    return helper.make_tensor(name, T.FLOAT, shape, values)


def zp_init(name, n):
    shape = [] if n == 1 else [n]
    return helper.make_tensor(name, formats.get(FMT).onnx_type, shape, bytes(n), raw=True)


def qdq_nodes(src, dst, scale, n, axis, inits, tag):
    inits += [scale_init(f"{tag}_s", scale), zp_init(f"{tag}_zp", n)]
    kw = {"axis": axis} if n > 1 else {}
    return [helper.make_node("QuantizeLinear", [src, f"{tag}_s", f"{tag}_zp"], [f"{tag}_q"], **kw),
            helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_zp"], [dst], **kw)]


def fq_nodes(src, dst, scale, n, axis, inits, tag):
    inits.append(scale_init(f"{tag}_s", scale))
    return [ops.make_fake_quant_node(src, f"{tag}_s", dst, format=FMT, axis=axis, name=tag)]


def part1(n, repeats):
    rng = np.random.default_rng(0)
    channels = 256
    x = rng.standard_normal(n).astype(np.float32)
    x3 = x.reshape(-1, channels, 1024)
    cscale = np.linspace(0.001, 0.01, channels).astype(np.float32)
    labels, fns = [], []

    def add(label, fn):
        labels.append(label)
        fns.append(fn)

    from fp8onnx.kernels import _cast

    for label, q, xin, sc, axis in (("per tensor", 1, x, 0.01, 1),
                                    ("per channel", channels, x3, cscale, 1)):
        inits_fq, inits_qdq = [], []
        ours = InferenceSession(model(fq_nodes("x", "y", sc, q, axis, inits_fq, "a"), inits_fq),
                                options())
        native = ort.InferenceSession(
            model(qdq_nodes("x", "y", sc, q, axis, inits_qdq, "a"), inits_qdq).SerializeToString(),
            options(), providers=["CPUExecutionProvider"])
        a = ours.run(None, {"x": xin})[0]
        b = native.run(None, {"x": xin})[0]
        assert np.array_equal(a, b, equal_nan=True), "custom op and native Q->DQ disagree"
        add(f"fp8onnx FakeQuant {label} (fp8onnx session)", lambda s=ours, f={"x": xin}: s.run(None, f))
        add(f"onnxruntime Q->DQ {label} (onnxruntime session)",
            lambda s=native, f={"x": xin}: s.run(None, f))
    threads = os.cpu_count() or 1
    if threads > 1:
        inits_fq, inits_qdq = [], []
        ours = InferenceSession(model(fq_nodes("x", "y", 0.01, 1, 1, inits_fq, "a"), inits_fq),
                                options(threads))
        native = ort.InferenceSession(
            model(qdq_nodes("x", "y", 0.01, 1, 1, inits_qdq, "a"), inits_qdq).SerializeToString(),
            options(threads), providers=["CPUExecutionProvider"])
        add(f"fp8onnx FakeQuant per tensor, {threads} threads", lambda: ours.run(None, {"x": x}))
        add(f"onnxruntime Q->DQ per tensor, {threads} threads", lambda: native.run(None, {"x": x}))
    out = np.empty_like(x)
    add("bare kernel fake_quant_tensor, preallocated output (no ORT)",
        lambda: _cast.fake_quant_tensor(x, np.float32(0.01), True, 0, out))
    out3 = out.reshape(x3.shape)
    add("bare kernel fake_quant_axis, preallocated output (no ORT)",
        lambda: _cast.fake_quant_axis(x3, cscale, True, 0, out3))
    ident = model([helper.make_node("Identity", ["x"], ["y"])], [])
    s1 = InferenceSession(ident, options())
    s2 = ort.InferenceSession(ident.SerializeToString(), options(), providers=["CPUExecutionProvider"])
    add("Identity (fp8onnx session)", lambda: s1.run(None, {"x": x}))
    add("Identity (onnxruntime session)", lambda: s2.run(None, {"x": x}))
    add("numpy copy into a preallocated array", lambda: np.copyto(out, x))
    add("numpy copy to a new array (x.copy())", lambda: x.copy())
    rows = [(label, t / n * 1e9) for label, t in zip(labels, median_seconds(fns, repeats))]
    qdq_tensor = rows[1][1]
    copy = rows[-2][1]
    print(f"\nPart 1: {n:,} float32 elements, one thread, median of {repeats} "
          f"(format {FMT})")
    print(f"{'':56s} {'ns/elem':>8s} {'vs ORT Q->DQ':>13s} {'vs copy':>8s}")
    for label, ns in rows:
        print(f"{label:56s} {ns:8.3f} {qdq_tensor / ns:12.1f}x {ns / copy:7.2f}x")


def cnn(kind, batch):
    """3 Conv(+Relu) + 2 MatMul; kind in float, fakequant, qdq."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    chans = [3, 32, 64, 64]
    src = "x"
    amax_act = 4.0

    def quant(src, dst, scale, n, axis, tag):
        if kind == "float":
            return src
        maker = fq_nodes if kind == "fakequant" else qdq_nodes
        nodes.extend(maker(src, dst, scale, n, axis, inits, tag))
        return dst

    fmax = formats.get(FMT).max
    for i in range(3):
        w = (rng.standard_normal((chans[i + 1], chans[i], 3, 3)) * 0.2).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", T.FLOAT, w.shape, w.ravel()))
        wscale = np.abs(w).reshape(w.shape[0], -1).max(1) / fmax
        xin = quant(src, f"c{i}_xq", amax_act / fmax, 1, 1, f"c{i}_x")
        wq = quant(f"w{i}", f"w{i}_q", wscale, w.shape[0], 0, f"c{i}_w")
        nodes += [helper.make_node("Conv", [xin, wq], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[2, 2] if i else [1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        src = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [src], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["f0"]))
    src = "f0"
    dims = [64, 128, 10]
    for i in range(2):
        w = (rng.standard_normal((dims[i], dims[i + 1])) * 0.2).astype(np.float32)
        inits.append(helper.make_tensor(f"m{i}", T.FLOAT, w.shape, w.ravel()))
        xin = quant(src, f"m{i}_xq", amax_act / fmax, 1, 1, f"m{i}_x")
        wq = quant(f"m{i}", f"m{i}_q", np.abs(w).max(0) / fmax, w.shape[1], 1, f"m{i}_w")
        nodes.append(helper.make_node("MatMul", [xin, wq], [f"mm{i}" if i == 0 else "y"]))
        if i == 0:
            nodes.append(helper.make_node("Relu", ["mm0"], ["f1"]))
            src = "f1"
    return model(nodes, inits)


def mlp(kind, hidden=512, layers=4):
    """A transformer-style MLP stack: ``layers`` x (MatMul hidden->4*hidden, Relu, MatMul back)."""
    rng = np.random.default_rng(3)
    inits, nodes = [], []
    fmax = formats.get(FMT).max
    src = "x"
    for i in range(2 * layers):
        k, n = (hidden, 4 * hidden) if i % 2 == 0 else (4 * hidden, hidden)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", T.FLOAT, w.shape, w.ravel()))
        xin, wq = src, f"w{i}"
        if kind != "float":
            maker = fq_nodes if kind == "fakequant" else qdq_nodes
            nodes.extend(maker(src, f"x{i}_fq", 4.0 / fmax, 1, 1, inits, f"x{i}"))
            nodes.extend(maker(f"w{i}", f"w{i}_fq", np.abs(w).max(0) / fmax, n, 1, inits, f"w{i}"))
            xin, wq = f"x{i}_fq", f"w{i}_fq"
        out = "y" if i == 2 * layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [xin, wq], [out]))
        if i % 2 == 0:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        src = out
    return model(nodes, inits)


def part2(repeats, name, build, x):
    runs = [
        ("float model (onnxruntime session)",
         ort.InferenceSession(build("float").SerializeToString(), options(),
                              providers=["CPUExecutionProvider"])),
        ("float model (fp8onnx session)", InferenceSession(build("float"), options())),
        ("emulated FP8: FakeQuant on every weight and activation (fp8onnx)",
         InferenceSession(build("fakequant"), options())),
        ("  the same without folding the weights' FakeQuant (fold_constants=False)",
         InferenceSession(build("fakequant"), options(), fold_constants=False)),
        ("native FP8 QDQ model (onnxruntime session)",
         ort.InferenceSession(build("qdq").SerializeToString(), options(),
                              providers=["CPUExecutionProvider"])),
    ]
    fns = [lambda s=s: s.run(None, {"x": x}) for _, s in runs]
    times = list(zip([label for label, _ in runs], median_seconds(fns, repeats)))
    base = times[0][1]
    print(f"\nPart 2: {name}, one thread, median of {repeats} (format {FMT})")
    print(f"{'':74s} {'ms':>8s} {'vs float':>9s}")
    for label, t in times:
        print(f"{label:74s} {t * 1e3:8.2f} {t / base:8.2f}x")


def profile_cnn(runs=30):
    """Per-op kernel times (onnxruntime's profiler) of the float and emulated CNN."""
    import collections
    import json
    import tempfile

    x = np.random.default_rng(2).standard_normal((8, 3, 64, 64)).astype(np.float32)
    print(f"\nCNN per-op kernel time in ms, mean over {runs} runs (onnxruntime profiler), one thread")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("float", "fakequant"):
            so = options()
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, kind)
            sess = InferenceSession(cnn(kind, 8), so)
            for _ in range(runs):
                sess.run(None, {"x": x})
            per_op = collections.defaultdict(list)
            with open(sess.end_profiling()) as f:
                for e in json.load(f):
                    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                        per_op[e["args"]["op_name"]].append(e["dur"])
            # Each op type's nodes summed, per run.
            totals = {op: float(np.sum(v)) / runs for op, v in per_op.items()}
            print(f"  {kind:10s} total {sum(totals.values()) / 1e3:6.2f} ms: " + ", ".join(
                f"{op} {t / 1e3:.2f}" for op, t in sorted(totals.items(), key=lambda kv: -kv[1])))


ZOO_CNNS = ("digits_cnn", "ppocr_cls", "ppocr_rec", "ppocr_det", "mobilenet_v2", "nudenet_yolov8n")
ZOO_BATCH = {"digits_cnn": 64}  # samples in the timed feed (8x8 digits: one is too small to time)


def zoo_variants(name):
    """(feed, {label: model}) of zoo entry ``name``: float, E3M4/E4M3 emulated, E4M3 QDQ."""
    import fp8onnx
    from fp8onnx import zoo

    e = zoo.get(name)
    model = e.load()
    calib = list(e.calib_feeds(16))
    feed = next(iter(e.eval_feeds(ZOO_BATCH.get(name, 1))))
    out = {"float": model}
    for fmt, emit in (("e3m4", "emulate"), ("e4m3", "emulate"), ("e4m3", "qdq")):
        out[f"{fmt} {emit}"] = fp8onnx.compile_model(model, format=fmt, calibration=calib, emit=emit).model
    out["e3m4 emulate pow2"] = fp8onnx.compile_model(model, format="e3m4", calibration=calib, emit="emulate",
                                                     pow2_scales=True).model
    return feed, out


#: Part 3's sessions: label and tag (the file name of its profile and optimized model).
ZOO_TAGS = {
    "float (onnxruntime)": "float",
    "float (fp8onnx session)": "float_fp8onnx",
    "E3M4 emulated": "e3m4",
    "E4M3 emulated": "e4m3",
    "E3M4 emulated, NCHWc reorders kept": "e3m4_reorders",
    "E3M4 emulated, pow2 scales": "e3m4_pow2",
    "E4M3 QDQ (onnxruntime)": "qdq",
}


def zoo_sessions(models, threads, profile_dir=None):
    """{label: session}: the float model in onnxruntime, the rest as described in Part 3,
    in the order of :data:`ZOO_TAGS`."""
    from fp8onnx.runtime import FP8_UNSAFE_OPTIMIZERS

    def so(label):
        tag = ZOO_TAGS[label]
        o = options(threads)
        if profile_dir:
            o.enable_profiling = True
            o.profile_file_prefix = os.path.join(profile_dir, tag)
            o.optimized_model_filepath = os.path.join(profile_dir, f"{tag}.onnx")
        return o

    def ort_session(model, label):
        return ort.InferenceSession(model.SerializeToString(), so(label), providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(FP8_UNSAFE_OPTIMIZERS))

    made = {
        "float (onnxruntime)": lambda k: ort_session(models["float"], k),
        "float (fp8onnx session)": lambda k: InferenceSession(models["float"], so(k)),
        "E3M4 emulated": lambda k: InferenceSession(models["e3m4 emulate"], so(k)),
        "E4M3 emulated": lambda k: InferenceSession(models["e4m3 emulate"], so(k)),
        "E3M4 emulated, NCHWc reorders kept": lambda k: InferenceSession(models["e3m4 emulate"], so(k),
                                                                         blocked_fake_quant=False),
        # Power-of-two scales: FakeQuant multiplies by the exact reciprocal instead of dividing.
        "E3M4 emulated, pow2 scales": lambda k: InferenceSession(models["e3m4 emulate pow2"], so(k)),
        "E4M3 QDQ (onnxruntime)": lambda k: ort_session(models["e4m3 qdq"], k),
    }
    return {label: made[label](label) for label in ZOO_TAGS}


def ratio_medians(sessions, feed, repeats):
    """Per session: (median wall seconds, median over repeats of wall / first session's
    wall, the same for thread CPU time, fastest wall / first session's fastest wall,
    median of wall / second session's wall), each repeat running every session in turn.

    With one intra-op thread onnxruntime runs the graph on the calling thread, so its
    CPU time (``time.thread_time``) leaves out the time the OS gave to other processes:
    on a shared machine that ratio is the steadier one; with more threads only the wall
    ratio means anything. The fastest-run ratio shows what a quiet machine would see
    (other processes only ever add time). The repeats are tools/_timing.py's rounds,
    shared with tools/coverage_worker.py: the order rotates each repeat (the slot right
    after another session's run was measured slower for any session placed there).
    """
    fns = [_timing.session_call(s, feed) for s in sessions.values()]
    for fn in fns:
        for _ in range(3):
            fn()  # warm up: compile, arena growth, pre-packing
    t = time.perf_counter()
    fns[0]()
    # Short samples (~3 ms): a time slice lost to another process spoils few of them.
    inner = _timing.runs_per_sample(time.perf_counter() - t, 0.003)
    rounds = _timing.rotated_rounds(fns, repeats, inner, (time.perf_counter, time.thread_time))
    wall = [[per[i][0] for per in rounds] for i in range(len(fns))]
    cpu = [[per[i][1] for per in rounds] for i in range(len(fns))]
    return [(statistics.median(w), statistics.median(a / b for a, b in zip(w, wall[0])),
             statistics.median(a / b for a, b in zip(c, cpu[0])), min(w) / min(wall[0]),
             statistics.median(a / b for a, b in zip(w, wall[1])))
            for w, c in zip(wall, cpu)]


def profile_line(label, session, profile_dir, tag):
    """Reorder node count in the optimized graph and FakeQuant / Conv kernel time."""
    import collections
    import json

    import onnx

    events = json.load(open(session.end_profiling()))
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    graph = onnx.load(os.path.join(profile_dir, f"{tag}.onnx"), load_external_data=False).graph
    reorders = sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in graph.node)
    total = sum(per_op.values()) or 1
    share = ", ".join(f"{op} {100 * per_op[op] / total:.0f}%" for op in
                      ("Conv", "FakeQuant", "ReorderInput", "ReorderOutput", "QuantizeLinear",
                       "DequantizeLinear") if per_op[op])
    print(f"    {label:38s} {reorders:4d} Reorder nodes; kernel time: {share}")
    fq = fake_quant_costs(events)
    if fq:
        print(f"    {'':38s} FakeQuant: {fq}")


def fake_quant_costs(events):
    """Where FakeQuant time goes: ns per element on large tensors (the loop's arithmetic)
    and the per-call time of tiny ones (onnxruntime's per-node cost), from one profile."""
    import collections
    import statistics

    runs, size = collections.defaultdict(list), {}
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["args"].get("op_name") == "FakeQuant"):
            runs[e["name"]].append(e["dur"])
            size[e["name"]] = int(e["args"].get("output_size", 0)) // 4
    if not runs:
        return ""
    per_node = {k: statistics.median(v) for k, v in runs.items()}
    large = [k for k in runs if size[k] >= 1 << 18]
    tiny = [k for k in runs if size[k] < 1 << 10]
    out = f"{len(runs)} nodes, {sum(per_node.values()):.0f} us per run"
    if large:
        ns = 1000 * sum(per_node[k] for k in large) / sum(size[k] for k in large)
        out += f"; {len(large)} tensors >= 256K elements at {ns:.3f} ns/element"
    if tiny:
        out += (f"; {len(tiny)} tensors < 1K elements at "
                f"{statistics.median(per_node[k] for k in tiny):.1f} us per call")
    return out


def part3(names, threads_list, repeats, profile):
    import tempfile

    from fp8onnx import zoo

    print(f"\nPart 3: zoo CNNs, median over {repeats} interleaved repeats of time / float time")
    for name in names:
        try:
            feed, models = zoo_variants(name)
        except zoo.ZooSkip as e:
            print(f"{name}: {e}")
            continue
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
        for threads in threads_list:
            sessions = zoo_sessions(models, threads)
            rows = ratio_medians(sessions, feed, repeats)
            print(f"\n{name} ({shapes}), {threads} thread{'s' if threads > 1 else ''}"
                  f"{'':{max(0, 14 - len(shapes))}s}     wall ms  wall/float  fastest/float"
                  f"  wall/float(fp8onnx)" + ("  cpu/float" if threads == 1 else ""))
            for (label, _), (t, r, rc, rmin, r2) in zip(sessions.items(), rows):
                print(f"  {label:38s} {t * 1e3:9.3f} {r:10.2f}x {rmin:13.2f}x {r2:19.2f}x"
                      + (f" {rc:9.2f}x" if threads == 1 else ""))
            if profile:  # separate sessions: the profiler's own cost stays out of the timings
                with tempfile.TemporaryDirectory() as tmp:
                    profiled = zoo_sessions(models, threads, tmp)
                    for label, sess in profiled.items():
                        for _ in range(10):
                            sess.run(None, feed)
                        profile_line(label, sess, tmp, ZOO_TAGS[label])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=int, default=16 * 2**20)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", action="store_true",
                    help="also print per-op time from onnxruntime's profiler")
    ap.add_argument("--zoo", nargs="*", metavar="NAME",
                    help=f"run only Part 3 on these zoo CNNs (default: {' '.join(ZOO_CNNS)})")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="Part 3 thread counts")
    args = ap.parse_args(argv)
    if args.elements % (256 * 1024):
        ap.error("--elements must be a multiple of 262144 (256 channels x 1024)")
    print(f"onnxruntime {ort.__version__}")
    if args.zoo is not None:
        part3(args.zoo or ZOO_CNNS, args.threads, args.repeats, args.profile)
        return
    part1(args.elements, args.repeats)
    rng = np.random.default_rng(2)
    part2(args.repeats, "CNN, 3 Conv(+Relu) + GlobalAveragePool + 2 MatMul, input 8x3x64x64",
          lambda kind: cnn(kind, 8), rng.standard_normal((8, 3, 64, 64)).astype(np.float32))
    part2(args.repeats, "MLP, 4 x (MatMul 512->2048, Relu, MatMul 2048->512), input 256x512",
          mlp, rng.standard_normal((256, 512)).astype(np.float32))
    if args.profile:
        profile_cnn()


if __name__ == "__main__":
    main()
