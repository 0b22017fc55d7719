"""Time of each preparation pass on the PP-OCRv4 models (median of 5 runs each)."""
import statistics
from fp8onnx import zoo
from fp8onnx.passes import LiftConstants, UpgradeOpset, FoldConstants, InferShapes, NameNodes, TopologicalSort
from fp8onnx.passinfra import PassManager, Timing
for name in ["ppocr_det", "ppocr_rec", "ppocr_cls"]:
    e = zoo.get(name)
    recs = {}
    for _ in range(5):
        t = Timing()
        PassManager([LiftConstants(), UpgradeOpset(19), FoldConstants(), InferShapes(), NameNodes(), TopologicalSort()],
                    instruments=[t])(e.load())
        for n, s, mod in t.records:
            recs.setdefault(n, []).append(s)
    print(name, "  ".join(f"{n} {1e3*statistics.median(v):.0f} ms" for n, v in recs.items()),
          f"| total {1e3*sum(statistics.median(v) for v in recs.values()):.0f} ms")
