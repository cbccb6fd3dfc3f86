"""int8 for CPU: dynamic quantisation that passes the int8 parity gate.

Plain dynamic int8 (per-tensor weights and activations) cost MiniLM a min cosine of 0.86 here.
The scheme, step by step (each measured, see benchmarks/README.md):

1. after onnxruntime's transformer fusions, every MatMul / fused Attention / Gemm with constant
   weights is quantised dynamically: int8 weights per output channel (symmetric), uint8
   activations per tensor (``DynamicQuantizeMatMul`` / ``QAttention``, onnxruntime's fused kernels);
2. calibration: each node is quantised alone and scored on the bundled calibration inputs
   (1 - mean cosine to fp32); the most sensitive ones (in MiniLM: FFN matmuls after GELU, whose
   activations have outlier tokens) are *protected* until the summed error of the others is
   within the budget;
3. protected nodes stay fp32 (the default, ``protect="fp32"``), or, with ``protect="per-token"``,
   a protected MatMul is quantised per token: each row of activations gets its own scale
   (symmetric, shifted to uint8 so onnxruntime's u8s8 kernel runs it; weights on 7 bits so that
   kernel cannot saturate on AVX2), so one outlier token no longer flattens the others.
   Measured on MiniLM (2 cores, AVX2, 2400 STS-B sentences, 3 alternating reps): per-token 1.307x
   over the fp32 graph at min cosine 0.9767, fp32-protected 1.299x at 0.9840 (an earlier 4-rep run:
   1.437x vs 1.316x): no speed gain beyond noise and a thinner gate margin (export gate min 0.9717
   vs 0.9823), so fp32 stays the default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

Protect = Literal["per-token", "fp32"]
OPS = ["MatMul", "Attention", "Gemm"]
#: per-token weights use 7 bits (|q| <= 63): onnxruntime's u8s8 kernel on AVX2 without VNNI adds pairs of
#: uint8 x int8 products in int16 (vpmaddubsw), which saturates at 255 * 127 * 2 but not at 255 * 63 * 2
W_LEVELS = 63.0


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {k: f[k] for k in names})[0] for f in feeds])


def per_token_matmuls(model: Any, names: set[str]) -> int:
    """Rewrite the fp32 ``MatMul`` nodes in ``names`` (constant 2-D weights) of ``model`` (an ONNX
    ModelProto, in place) as per-token int8: ``MatMulInteger(uint8 activations with a per-row
    scale and zero point 128, int8 weights with a per-column scale)``. Returns how many it rewrote."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, done = [], 0
    for node in g.node:
        if node.name not in names or node.op_type != "MatMul" or node.input[1] not in inits:
            nodes.append(node)
            continue
        x, w = node.input
        weight = numpy_helper.to_array(inits[w]).astype(np.float32)
        if weight.ndim != 2:
            nodes.append(node)
            continue
        w_scale = np.abs(weight).max(0) / W_LEVELS
        w_scale[w_scale == 0] = 1.0
        w_q = np.clip(np.round(weight / w_scale), -W_LEVELS, W_LEVELS).astype(np.int8)
        p = f"pt{done}_{node.name.strip('/').replace('/', '_')}"
        g.initializer.extend([
            numpy_helper.from_array(w_q, f"{p}_wq"),
            numpy_helper.from_array(w_scale.astype(np.float32), f"{p}_ws"),
            numpy_helper.from_array(np.array(1 / 127.0, np.float32), f"{p}_inv127"),
            numpy_helper.from_array(np.array(1e-8, np.float32), f"{p}_eps"),
            numpy_helper.from_array(np.array(128.0, np.float32), f"{p}_f128"),
            numpy_helper.from_array(np.array(128, np.uint8), f"{p}_zp"),
        ])
        nodes += [
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], axes=[-1], keepdims=1, name=f"{p}_max"),
            helper.make_node("Max", [f"{p}_max", f"{p}_eps"], [f"{p}_maxc"], name=f"{p}_maxc"),
            helper.make_node("Mul", [f"{p}_maxc", f"{p}_inv127"], [f"{p}_as"], name=f"{p}_as"),  # row scales
            helper.make_node("Reciprocal", [f"{p}_as"], [f"{p}_inv"], name=f"{p}_inv"),
            helper.make_node("Mul", [x, f"{p}_inv"], [f"{p}_xs"], name=f"{p}_xs"),
            helper.make_node("Round", [f"{p}_xs"], [f"{p}_xr"], name=f"{p}_xr"),
            helper.make_node("Add", [f"{p}_xr", f"{p}_f128"], [f"{p}_xsh"], name=f"{p}_xsh"),
            helper.make_node("Cast", [f"{p}_xsh"], [f"{p}_xq"], to=TensorProto.UINT8, name=f"{p}_xq"),
            helper.make_node("MatMulInteger", [f"{p}_xq", f"{p}_wq", f"{p}_zp"], [f"{p}_acc"], name=f"{p}_mm"),
            helper.make_node("Cast", [f"{p}_acc"], [f"{p}_accf"], to=TensorProto.FLOAT, name=f"{p}_accf"),
            helper.make_node("Mul", [f"{p}_accf", f"{p}_as"], [f"{p}_y"], name=f"{p}_y"),
            helper.make_node("Mul", [f"{p}_y", f"{p}_ws"], [node.output[0]], name=f"{p}_out"),
        ]
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    unused = [i for i in g.initializer if i.name not in used]  # the fp32 weights that were replaced
    for init in unused:
        g.initializer.remove(init)
    return done


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], budget: float, work: Path,
                  protect: Protect = "fp32") -> str:
    """Quantise ``src`` into ``dst`` (see the module docstring); returns a note of what was done."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns through the root logger on every call
    graph = onnx.load(str(src), load_external_data=False).graph
    consts = {i.name for i in graph.initializer}
    kinds = {n.name: n.op_type for n in graph.node}
    candidates = [n.name for n in graph.node
                  if n.op_type in OPS and len(n.input) > 1 and n.input[1] in consts]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}

    def quantize(out: Path, **kw: Any) -> None:
        quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=OPS, extra_options=extra, **kw)

    ref = _run(src, feeds)

    def error(path: Path) -> float:
        return float(1 - (_run(path, feeds) * ref).sum(1).mean())

    solo = {}
    probe = work / "probe.onnx"
    for name in candidates:
        quantize(probe, nodes_to_quantize=[name])
        solo[name] = max(error(probe), 0.0)
    remaining, protected = sum(solo.values()), []
    for name in sorted(solo, key=solo.get, reverse=True):
        if remaining <= budget:
            break
        protected.append(name)
        remaining -= solo[name]
    quantize(dst, nodes_to_exclude=protected)
    per_token = [n for n in protected if kinds[n] == "MatMul"] if protect == "per-token" else []
    if per_token:
        model = onnx.load(str(dst))
        per_token_matmuls(model, set(per_token))
        onnx.save(model, str(dst))
    fp32 = [n for n in protected if n not in per_token]
    return (f"dynamic int8 (per-channel int8 weights, per-tensor uint8 activations) on {OPS}: "
            f"{len(candidates) - len(protected)}/{len(candidates)} nodes; protected by calibrated sensitivity "
            f"(error alone): {[(n, round(solo[n], 5)) for n in protected]}; of these per-token int8: "
            f"{len(per_token)}, kept fp32: {len(fp32)}; estimated error of the per-tensor nodes {remaining:.5f} "
            f"(budget {budget}); calibration error of the result {error(dst):.5f}")
