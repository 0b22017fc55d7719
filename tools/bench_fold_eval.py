import time, numpy as np, onnx, statistics
from onnx import helper, numpy_helper, TensorProto
from onnx.reference import ReferenceEvaluator
from fp8onnx import zoo, graph as G
from fp8onnx.passes import UpgradeOpset, LiftConstants
from fp8onnx.passes import fold_constants as fc
def t_ort(mini): t=time.perf_counter(); r=fc._run_ort(mini,feeds); return time.perf_counter()-t, r
def t_ref(mini): t=time.perf_counter(); r=ReferenceEvaluator(mini).run(None,feeds); return time.perf_counter()-t, r
rows=[]
for name in ['ppocr_rec','ppocr_cls']:
    m=zoo.get(name).load(); UpgradeOpset(19)(m); LiftConstants()(m)
    idx=G.GraphIndex(m.graph)
    for node in m.graph.node:
        ins=[i for i in node.input if i]
        if node.op_type!='Constant' and ins and all(idx.is_constant(i) for i in ins):
            mini,feeds=fc._one_node_model(node,[idx.constant(i) if i else None for i in node.input],m)
            a=t_ort(mini); b=t_ref(mini)
            same = all(np.array_equal(x,y) for x,y in zip(a[1],b[1]))
            rows.append((name,node.op_type,a[0],b[0],same))
print('real-model folds (first level):', len(rows), 'agree:', sum(r[4] for r in rows), 'ops:', sorted(set(r[1] for r in rows)))
print('median ms ort %.2f ref %.2f' % (1e3*statistics.median(r[2] for r in rows), 1e3*statistics.median(r[3] for r in rows)))
m=helper.make_model(helper.make_graph([],'g',[],[]), opset_imports=[helper.make_opsetid('',19)]); m.ir_version=9
w=np.random.default_rng(0).standard_normal((4096,4096)).astype(np.float32)
for node, ins in [(helper.make_node('Transpose',['a'],['o'],perm=[1,0]),[w]),
                  (helper.make_node('Cast',['a'],['o'],to=TensorProto.FLOAT8E4M3FN),[w]),
                  (helper.make_node('DequantizeLinear',['a','s'],['o']),[w.astype(__import__('ml_dtypes').float8_e4m3fn), np.float32(0.5)]),
                  (helper.make_node('MatMul',['a','b'],['o']),[w[:1024,:1024], w[:1024,:1024]])]:
    mini,feeds=fc._one_node_model(node,ins,m)
    ta=[t_ort(mini)[0] for _ in range(3)]; tb=[t_ref(mini)[0] for _ in range(3)]
    ra=fc._run_ort(mini,feeds)[0]; rb=ReferenceEvaluator(mini).run(None,feeds)[0]
    same = np.array_equal(ra.view(np.uint8), np.ascontiguousarray(rb).view(np.uint8)) if ra.dtype==rb.dtype else ('dtype', ra.dtype, rb.dtype)
    print(node.op_type, 'ort %.0f ms ref %.0f ms ratio %.1f identical %s' % (1e3*statistics.median(ta), 1e3*statistics.median(tb), statistics.median(tb)/statistics.median(ta), same))
