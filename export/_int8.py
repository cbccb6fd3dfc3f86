"""int8 for CPU: dynamic quantisation that passes the int8 parity gate.

Plain dynamic int8 (per-tensor weights and activations) gives MiniLM a min cosine of 0.86 on the
gate texts (AMD EPYC, 2 threads), far below the gate. The scheme, step by step (each measured, see
benchmarks/README.md):

1. after onnxruntime's transformer fusions, every MatMul / fused Attention / Gemm with constant
   weights is quantised dynamically: int8 weights per output channel (symmetric), uint8
   activations per tensor (``DynamicQuantizeMatMul`` / ``QAttention``, onnxruntime's fused kernels);
2. smoothing (SmoothQuant, Xiao et al. 2023): a few activation channels carry values far larger
   than the rest, and a per-tensor activation scale sized for them rounds every other channel
   coarsely. Each quantised node's input channel j is divided by
   ``s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)`` (an inserted ``Mul``) and its weight row j
   multiplied by ``s_j``, so the fp32 function is unchanged and part of the range moves into the
   per-channel weights. ``max|X_j|`` is read on the calibration inputs; ``alpha`` is picked from
   :data:`ALPHAS` (or no smoothing) by the calibration error of the fully quantised graph.
   MiniLM (all 24 nodes int8): no smoothing min cosine 0.971 / mean 0.990 on the gate texts,
   alpha 0.6: 0.986 / 0.994.
   On x86 CPUs without VNNI, 7-bit weights (onnxruntime's ``reduce_range``) are tried beside
   8-bit ones: there onnxruntime's u8s8 kernels add pairs of products in 16 bits (``vpmaddubsw``),
   which 8-bit weights can saturate, and the calibration, run on the exporting CPU, measures it;
3. calibration: if the fully quantised graph's error (1 - mean cosine to fp32 on the calibration
   inputs) exceeds the budget, each node is quantised alone and scored, and the most sensitive ones
   are *protected* until the summed error of the others is within the budget;
4. protected nodes stay fp32 (the default, ``protect="fp32"``), or, with ``protect="per-token"``,
   a protected MatMul is quantised per token: each row of activations gets its own scale
   (symmetric, shifted to uint8 so onnxruntime's u8s8 kernel runs it; weights on 7 bits so that
   kernel cannot saturate on AVX2), so one outlier token does not flatten the others.
   Measured on MiniLM with ``int8_smooth=False`` (AMD EPYC, AVX2 without VNNI, 2 threads, 2400 STS-B
   sentences, 3 alternating reps): per-token 1.307x over the fp32 graph at min cosine 0.9767,
   fp32-protected 1.299x at 0.9840: no speed gain beyond noise and a thinner gate margin (export
   gate min 0.9717 vs 0.9823), so fp32 is the default.
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
#: smoothing strengths tried (see the module docstring); the calibration error picks one, or none
ALPHAS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


def _session(path: Path) -> Any:
    """A quiet CPU onnxruntime session for calibration runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Progress:
    """A tqdm bar (stderr) whose steps are calibration runs: a graph quantised, then run over every
    calibration batch; the postfix names the run and the batch it is on.

    >>> p = _Progress(2, "int8 calibration", show=False); p.start("fp32 reference"); p.batch(1, 2); p.done()
    """

    def __init__(self, total: int, desc: str, *, show: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="run", disable=not show)
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        self.bar.set_postfix_str(label)

    def batch(self, i: int, n: int) -> None:
        self.bar.set_postfix_str(f"{self.label}: batch {i}/{n}")

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _run(path: Path, feeds: list[dict[str, np.ndarray]], progress: _Progress | None = None) -> np.ndarray:
    """The graph's outputs over every calibration batch (``progress`` is told each batch)."""
    sess = _session(path)
    names = [i.name for i in sess.get_inputs()]
    out = []
    for i, f in enumerate(feeds, start=1):
        out.append(sess.run(None, {k: f[k] for k in names})[0])
        if progress is not None:
            progress.batch(i, len(feeds))
    return np.concatenate(out)


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


def _candidates(graph: Any) -> list[Any]:
    """The nodes the quantiser takes: MatMul / Attention / Gemm with a constant weight."""
    consts = {i.name for i in graph.initializer}
    return [n for n in graph.node if _quantisable(n, consts)]


def _quantisable(node: Any, consts: set[str]) -> bool:
    return node.op_type in OPS and len(node.input) > 1 and node.input[1] in consts


def _weight_axis(node: Any) -> int:
    """The axis of ``node``'s weight that runs over input channels (0, or 1 for ``Gemm(transB=1)``)."""
    if node.op_type == "Gemm":
        return next((1 for a in node.attribute if a.name == "transB" and a.i == 1), 0)
    return 0


def activation_ranges(path: Path, feeds: list[dict[str, np.ndarray]], work: Path,
                      progress: _Progress | None = None) -> dict[str, np.ndarray]:
    """Per channel ``max |x|`` of every quantisable node's input over ``feeds`` (padding rows left
    out where an ``attention_mask`` says which they are; ``progress`` is told each batch)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    names = sorted({n.input[0] for n in _candidates(model.graph)})
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in have)
    probe = work / "ranges.onnx"
    onnx.save(model, str(probe))
    sess = _session(probe)
    inputs = [i.name for i in sess.get_inputs()]
    ranges: dict[str, np.ndarray] = {}
    for i, feed in enumerate(feeds, start=1):
        mask = feed.get("attention_mask")
        for name, out in zip(names, sess.run(names, {k: feed[k] for k in inputs})):
            rows = (out[mask.astype(bool)] if mask is not None and out.shape[:2] == mask.shape
                    else out.reshape(-1, out.shape[-1]))
            ranges[name] = np.maximum(ranges.get(name, 0.0), np.abs(rows).max(0))
        if progress is not None:
            progress.batch(i, len(feeds))
    probe.unlink()
    return ranges


def smooth(src: Path, dst: Path, ranges: dict[str, np.ndarray], alpha: float) -> int:
    """Write ``src`` with SmoothQuant scaling of strength ``alpha`` at every quantisable node to
    ``dst``: the same fp32 function, with activation outliers moved into the weights. Returns how
    many nodes it scaled."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = set(inits)
    nodes, done = [], 0
    for node in g.node:  # (protobuf hands out a new wrapper per access, so nodes are matched by content)
        x_max = ranges.get(node.input[0]) if _quantisable(node, consts) else None
        weight = numpy_helper.to_array(inits[node.input[1]]) if x_max is not None else None
        axis = _weight_axis(node) if weight is not None else 0
        if weight is None or weight.ndim != 2 or weight.shape[axis] != x_max.shape[0]:
            nodes.append(node)
            continue
        w_max = np.abs(weight).max(1 - axis)
        scale = np.ones_like(x_max)
        live = (x_max > 0) & (w_max > 0)
        scale[live] = np.clip(x_max[live] ** alpha / w_max[live] ** (1 - alpha), 1e-3, 1e3)
        shape = (-1, 1) if axis == 0 else (1, -1)
        new_w = f"{node.input[1]}_smooth{done}"  # a weight may be shared: each node gets its own copy
        g.initializer.extend([
            numpy_helper.from_array((weight * scale.reshape(shape)).astype(weight.dtype), new_w),
            numpy_helper.from_array((1 / scale).astype(np.float32), f"smooth{done}_inv"),
        ])
        nodes.append(helper.make_node("Mul", [node.input[0], f"smooth{done}_inv"], [f"smooth{done}_x"],
                                      name=f"smooth{done}"))
        node.input[0], node.input[1] = f"smooth{done}_x", new_w
        nodes.append(node)
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.save(model, str(dst))
    return done


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], budget: float, work: Path,
                  protect: Protect = "fp32", alphas: tuple[float, ...] = ALPHAS,
                  weight_bits: tuple[int, ...] | None = None, show_progress_bar: bool = False) -> str:
    """Quantise ``src`` into ``dst`` (see the module docstring); returns a note of what was done.

    ``show_progress_bar``: tqdm bars on stderr: ``int8 calibration``, one step per calibration run (the
    fp32 reference, the activation ranges, each smoothing alpha and weight width quantised and scored,
    the result), its postfix naming the run and the calibration batch it is on; and, when the budget is
    exceeded, ``int8 sensitivity per node`` (each quantisable node quantised alone and scored).

    ``weight_bits``: the weight widths the calibration tries, 8 and/or 7 (onnxruntime's
    ``reduce_range``). By default 8 on CPUs with VNNI, and both 8 and 7 on x86 CPUs without it,
    where 8-bit weights can saturate onnxruntime's 16-bit pair sums (``vpmaddubsw``) and 7-bit
    weights cannot.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import embedhub.modules as modules

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns through the root logger on every call
    graph = onnx.load(str(src), load_external_data=False).graph
    kinds = {n.name: n.op_type for n in graph.node}
    candidates = [n.name for n in _candidates(graph)]
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if weight_bits is None:
        weight_bits = (8, 7) if modules.int8_dot_kernel() == "no-vnni" else (8,)
    if not weight_bits or set(weight_bits) - {7, 8}:
        raise ValueError(f"weight_bits must hold 8 and/or 7, got {weight_bits!r}")

    def quantize(base: Path, out: Path, bits: int, **kw: Any) -> None:
        quantize_dynamic(str(base), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=OPS, extra_options=extra, reduce_range=bits == 7, **kw)

    from tqdm.auto import tqdm

    # runs: the fp32 reference, the ranges (when smoothing), each (alpha, bits) tried, the result
    runs = 1 + bool(alphas) + (1 + len(alphas)) * len(weight_bits) + 1
    bar = _Progress(runs, "int8 calibration", show=show_progress_bar)
    try:
        return _calibrate(src, dst, feeds, budget, work, protect, alphas, weight_bits, quantize, candidates, kinds,
                          bar, lambda total: tqdm(total=total, desc="int8 sensitivity per node", unit="node",
                                                  disable=not show_progress_bar))
    finally:
        bar.close()


def _calibrate(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], budget: float, work: Path, protect: Protect,
               alphas: tuple[float, ...], weight_bits: tuple[int, ...], quantize: Any, candidates: list[str],
               kinds: dict[str, str], bar: _Progress, node_bar: Any) -> str:
    """The steps of :func:`quantize_int8` after its arguments are checked; ``bar`` is told each run."""
    import onnx

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows.reshape(len(rows), -1)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    bar.start("fp32 reference")
    ref = unit(_run(src, feeds, bar))
    bar.done()

    def error(path: Path, on: _Progress | None = bar) -> float:  # 1 - mean cosine to the fp32 graph's outputs
        return float(1 - (unit(_run(path, feeds, on)) * ref).sum(1).mean())

    probe = work / "probe.onnx"
    ranges: dict[str, np.ndarray] = {}
    if alphas:
        bar.start("activation ranges")
        ranges = activation_ranges(src, feeds, work, bar)
        bar.done()
    bases: dict[float | None, Path] = {None: src, **{alpha: work / f"smooth{alpha}.onnx" for alpha in alphas}}
    tried: dict[tuple[float | None, int], float] = {}
    for alpha, base in bases.items():
        for bits in weight_bits:
            bar.start(f"alpha {alpha}, {bits}-bit weights")
            if alpha is not None and not base.exists():  # smoothed once, in the run that first needs it
                smooth(src, base, ranges, alpha)
            quantize(base, probe, bits)
            tried[alpha, bits] = error(probe)
            bar.done()
    alpha, bits = min(tried, key=lambda k: tried[k])
    base = bases[alpha]

    solo: dict[str, float] = {}
    protected: list[str] = []
    remaining = tried[alpha, bits]
    if remaining > budget:  # protect the most sensitive nodes, each scored alone
        with node_bar(len(candidates)) as nodes_bar:
            for name in candidates:
                nodes_bar.set_postfix_str(name[-40:])
                quantize(base, probe, bits, nodes_to_quantize=[name])
                solo[name] = max(error(probe, None), 0.0)
                nodes_bar.update(1)
        remaining = sum(solo.values())
        for name in sorted(solo, key=solo.get, reverse=True):
            if remaining <= budget:
                break
            protected.append(name)
            remaining -= solo[name]
    bar.start(f"result (alpha {alpha}, {bits}-bit, {len(protected)} protected)")
    quantize(base, dst, bits, nodes_to_exclude=protected)
    per_token = [n for n in protected if kinds[n] == "MatMul"] if protect == "per-token" else []
    if per_token:
        model = onnx.load(str(dst))
        per_token_matmuls(model, set(per_token))
        onnx.save(model, str(dst))
    fp32 = [n for n in protected if n not in per_token]
    by = ", ".join(f"{a}/{b}-bit: {e:.5f}" for (a, b), e in tried.items())
    final = error(dst)
    bar.done()
    return (f"dynamic int8 ({bits}-bit per-channel weights, per-tensor uint8 activations) on {OPS}; smoothing "
            f"alpha {alpha} (calibration error of the fully quantised graph by alpha/weight bits: {by}); "
            f"{len(candidates) - len(protected)}/{len(candidates)} nodes quantised per tensor; protected by "
            f"calibrated sensitivity (error alone): {[(n, round(solo[n], 5)) for n in protected]}; of these "
            f"per-token int8: {len(per_token)}, kept fp32: {len(fp32)} (budget {budget}); calibration error "
            f"of the result {final:.5f}")
