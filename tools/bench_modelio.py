"""Peak memory and time of saving a large model with external data: fp8onnx.modelio.save_model
vs onnx.save_model(save_as_external_data=True). Each variant runs in its own process.

usage: python bench_modelio.py [total_MB] [repeats]
"""
import os, subprocess, sys, tempfile, time, json
import numpy as np

def build(total_mb):
    from onnx import helper, numpy_helper, TensorProto
    n = 8
    per = total_mb * 1024 * 1024 // 4 // n
    inits, nodes, prev = [], [], "x"
    for i in range(n):
        a = np.full(per, i, np.float32)
        inits.append(numpy_helper.from_array(a, f"w{i}"))
        nodes.append(helper.make_node("Add", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
        del a
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [per])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [per])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    return m

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

def child(variant, total_mb, folder):
    import onnx
    m = build(total_mb)
    base = rss_mb()
    # reset peak counter (Linux >= 4.0): write 5 to clear_refs
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t = time.perf_counter()
    path = os.path.join(folder, f"{variant}.onnx")
    if variant == "fp8onnx":
        from fp8onnx.modelio import save_model
        save_model(m, path, external_data=True)
    else:
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{variant}.onnx.data")
    dt = time.perf_counter() - t
    with open("/proc/self/status") as f:
        peak = [int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM")][0]
    intact = all(t.HasField("raw_data") for t in m.graph.initializer)
    print(json.dumps({"variant": variant, "model_rss_mb": round(base), "peak_extra_mb": round(peak - base),
                      "seconds": round(dt, 2), "model_intact_after": intact}))

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4]); sys.exit()
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results = {}
    with tempfile.TemporaryDirectory(dir=os.path.expanduser("~")) as d:
        for r in range(reps):
            for v in ("onnx", "fp8onnx"):
                out = subprocess.run([sys.executable, __file__, "child", v, str(total), d], capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr); sys.exit(1)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(v, []).append(res)
                for f in os.listdir(d):
                    os.remove(os.path.join(d, f))
    for v, rs in results.items():
        print(v, "model RSS %d MB" % rs[0]["model_rss_mb"],
              "peak extra median %d MB" % np.median([r["peak_extra_mb"] for r in rs]),
              "time median %.2f s" % np.median([r["seconds"] for r in rs]),
              "model intact after save:", rs[0]["model_intact_after"])
