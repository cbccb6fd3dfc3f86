"""ONNX export behind the parity gate, and the ONNX Runtime backend, on real and tiny real models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import unique_rows

import embedhub

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from export import GATES, ParityError, export  # noqa: E402  (after the importorskips)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_fp32(tmp_path_factory, minilm):
    return export(minilm, tmp_path_factory.mktemp("x") / "minilm-onnx", verbose=False)


@pytest.fixture(scope="module")
def minilm_int8(tmp_path_factory, minilm):
    return export(minilm, tmp_path_factory.mktemp("x") / "minilm-int8", quantize="int8", verbose=False)


@pytest.mark.parametrize(("fixture", "keep_torch"), [
    ("tiny_st_dir", False), ("open_clip_dir", False), ("hf_clip_dir", False), ("tiny_embedhub_dir", False),
    ("tiny_st_dir", True), ("open_clip_dir", True)])
def test_export_each_format(fixture, keep_torch, request, tmp_path, photos):
    from embedhub.modules.backends import sha256_file

    source = request.getfixturevalue(fixture)
    if keep_torch and fixture not in ("tiny_st_dir", "tiny_embedhub_dir"):  # an explicit request that cannot be met
        with pytest.raises(ValueError, match="keep_torch=True .*cannot write the torch towers"):
            export(source, tmp_path / "onnx", verbose=False, keep_torch=True)
        assert not (tmp_path / "onnx").exists()
        return
    out = export(source, tmp_path / "onnx", verbose=False, keep_torch=keep_torch)
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert meta["gate"]["passed"] and meta["precision"] == "fp32" and meta["normalized_output"] is False
    torch_model = embedhub.load(source, device="cpu")
    onnx_model = embedhub.load(out, backend="onnx")
    assert onnx_model.backend == "onnx" and onnx_model.modalities == torch_model.modalities
    assert embedhub.load(out, backend="auto").backend == "onnx"
    for modality in torch_model.modalities:
        assert (out / "onnx" / f"{modality}.onnx").is_file()
        assert meta["gate"]["modalities"][modality]["min_cosine"] >= GATES["fp32"]["min"]
        inputs = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "x"] if modality == "text" \
            else photos
        ref = torch_model.encode(inputs)
        got = onnx_model.encode(inputs)
        assert _cos(got, ref).min() >= 0.99999
        # unnormalised: the same numbers too (the graphs leave the L2 normalisation to encode)
        np.testing.assert_allclose(onnx_model.encode(inputs, normalize=False),
                                   torch_model.encode(inputs, normalize=False), rtol=1e-4, atol=1e-5)
        assert meta["gate"]["modalities"][modality]["max_norm_error"] <= GATES["fp32"]["norm"]
    # torch weights are kept only when asked, and only for formats embedhub can rebuild; otherwise the
    # folder holds what backend="onnx" needs
    rebuildable = keep_torch and fixture in ("tiny_st_dir", "tiny_embedhub_dir")
    assert meta["torch_weights_kept"] == rebuildable
    assert bool(list(out.rglob("*.safetensors"))) == rebuildable
    # the SHA-256 of every graph (and of the torch weights when kept: the model's file and the transformers
    # backbone's own), checked at load
    weights = ["model.safetensors"] + (["text/model.safetensors"] if "text" in torch_model.modalities else [])
    hashed = [f"onnx/{m}.onnx" for m in torch_model.modalities] + (weights if rebuildable else [])
    assert meta["sha256"] == {rel: sha256_file(out / rel) for rel in hashed}
    # a load that names no backend takes torch when the folder has torch weights, else the ONNX graphs
    assert embedhub.load(out).backend == ("torch" if rebuildable else "onnx")
    if rebuildable:
        assert embedhub.load(out, backend="torch").backend == "torch"
    else:  # the error names the model the export was made from and the option that keeps a torch copy
        with pytest.raises(embedhub.UnknownFormatError, match="use backend='onnx'") as err:
            embedhub.load(out, backend="torch")
        assert "--keep-torch" in str(err.value) and "keep_torch=True" in str(err.value)
        assert f"ONNX export of {torch_model.name!r} written without its torch copy" in str(err.value)


def test_minilm_onnx_matches_torch_on_stsb(minilm_fp32, sts_test, minilm_sts_test):
    s1, s2, _ = sts_test
    sentences = list(dict.fromkeys(s1 + s2))
    onnx_model = embedhub.load(minilm_fp32, backend="onnx", threads=2)
    ref = unique_rows(sentences, (s1, minilm_sts_test[0]), (s2, minilm_sts_test[1]))  # minilm.encode's output
    got = onnx_model.encode(sentences, batch_size=64)
    assert _cos(got, ref).min() >= GATES["fp32"]["min"]
    meta = json.loads((minilm_fp32 / "onnx" / "export_metadata.json").read_text())
    fused = meta["steps"]["text"][1]["ops"]
    assert fused.get("Attention") == 6 and fused.get("SkipLayerNormalization") == 12


def test_int8_keeps_stsb_spearman(minilm, minilm_fp32, minilm_int8, sts_test, minilm_sts_test, tmp_path):
    import re
    from collections import Counter

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from scipy.stats import spearmanr

    from embedhub.modules.backends import int8_dot_kernel
    from export._data import CALIBRATION_TEXTS
    from export._export import _feed
    from export._int8 import OPS, _candidates, _quantisable, _run

    s1, s2, gold = sts_test
    int8 = embedhub.load(minilm_int8, backend="onnx", threads=2)

    def spearman(a: np.ndarray, b: np.ndarray) -> float:
        return 100 * spearmanr((a * b).sum(1), gold).statistic

    fp32 = spearman(*minilm_sts_test)  # minilm.encode(s1), minilm.encode(s2)
    q = spearman(int8.encode(s1, batch_size=64), int8.encode(s2, batch_size=64))
    assert abs(fp32 - q) <= 0.5, (fp32, q)
    cos = _cos(int8.encode(s1[:500]), minilm_sts_test[0][:500])
    assert cos.mean() >= GATES["int8"]["mean"] and cos.min() >= GATES["int8"]["min"]
    meta = json.loads((minilm_int8 / "onnx" / "export_metadata.json").read_text())
    assert meta["precision"] == "int8" and "MatMulInteger" in meta["steps"]["text"][-1]["ops"]
    note = meta["steps"]["text"][-1]["note"]
    vnni = int8_dot_kernel() == "vnni"

    # "all 24 matmuls int8" (README): the fp32 graph has 24 quantisable nodes (6 fused Attention + 18 MatMul with
    # constant weights); the int8 graph has one int8 node per quantised one and fp32 ones only where protected
    fp32_graph = onnx.load(str(minilm_fp32 / "onnx" / "text.onnx"), load_external_data=False).graph
    candidates = Counter(n.op_type for n in _candidates(fp32_graph))
    assert candidates == {"Attention": 6, "MatMul": 18}, candidates
    int8_graph = onnx.load(str(minilm_int8 / "onnx" / "text.onnx"), load_external_data=False).graph
    ops = Counter(n.op_type for n in int8_graph.node)
    quantised = ops["QAttention"] + ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"]
    consts = {i.name for i in int8_graph.initializer}
    left_fp32 = [n.op_type for n in int8_graph.node if _quantisable(n, consts)]
    done, total = map(int, re.search(r"(\d+)/(\d+) nodes quantised", note).groups())
    assert total == sum(candidates.values()) == 24 and quantised == done and len(left_fp32) == total - done, note
    assert ops["QAttention"] == 6 - left_fp32.count("Attention")
    if "kept fp32: 0" in note or "protected by calibrated sensitivity (error alone): []" in note:
        assert left_fp32 == [] and quantised == 24
    if vnni:  # measured there (README, benchmarks/README.md): nothing protected, all 24 int8
        assert quantised == 24 and left_fp32 == [], note

    # smoothing: on the calibration sentences, the exported int8 graph is closer to the fp32 graph than plain
    # dynamic int8 (same weight width, no smoothing), as its note reports
    feeds = _feed(minilm, "text", list(CALIBRATION_TEXTS))
    ref = _run(minilm_fp32 / "onnx" / "text.onnx", feeds)
    plain = tmp_path / "plain-int8.onnx"
    bits = int(re.search(r"dynamic int8 \((\d)-bit", note).group(1))
    quantize_dynamic(str(minilm_fp32 / "onnx" / "text.onnx"), str(plain), per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=OPS, reduce_range=bits == 7,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    err_plain = 1 - _cos(_run(plain, feeds), ref).mean()
    err_int8 = 1 - _cos(_run(minilm_int8 / "onnx" / "text.onnx", feeds), ref).mean()
    reported = float(re.search(r"calibration error of the result ([\d.]+)", note).group(1))
    assert abs(err_int8 - reported) < 2e-4, (err_int8, reported)  # the note reports what the graph does
    assert err_int8 <= err_plain * 1.01, (err_int8, err_plain)  # no smoothing is among the candidates
    if vnni:  # measured there: MiniLM's outlier channels get smoothed (calibration error 0.0103 -> 0.0057)
        assert "smoothing alpha None" not in note
        assert err_int8 < 0.75 * err_plain, (err_int8, err_plain)


def test_broken_export_is_refused(minilm, tmp_path, monkeypatch):
    """A perturbed weight in the exported graph must fail the gate, and nothing may be written."""
    import onnx
    from onnx import numpy_helper

    from export import _export

    original = _export._torch_to_onnx

    def broken(model, modality, path, opset):
        original(model, modality, path, opset)
        graph = onnx.load(str(path))
        init = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(init).copy()
        w[: w.shape[0] // 10] *= 1.05  # 5% on a tenth of the largest matrix
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(graph, str(path))

    monkeypatch.setattr(_export, "_torch_to_onnx", broken)
    out = tmp_path / "broken"
    with pytest.raises(ParityError, match="parity gate failed for fp32") as err:
        export(minilm, out, verbose=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert err.value.report["gate"]["modalities"]["text"]["min_cosine"] < GATES["fp32"]["min"]


def test_token_budget_batching_same_result(minilm, minilm_fp32, sts_test):
    onnx_model = embedhub.load(minilm_fp32, backend="onnx")
    texts = sts_test[0][:200]
    for model in (minilm, onnx_model):
        np.testing.assert_allclose(model.encode(texts, max_tokens=300), model.encode(texts, batch_size=16), atol=2e-6)


def test_onnx_errors(minilm_fp32, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="without embedhub ONNX graphs; export it first"):
        embedhub.load("all-MiniLM-L6-v2", backend="onnx")
    with pytest.raises(ValueError, match="int8 quantisation starts from fp32"):
        export("all-MiniLM-L6-v2", tmp_path / "x", dtype="fp16", quantize="int8")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(embedhub.MissingDependencyError, match=r"pip install 'embedhub\[onnx\]'"):
        embedhub.load(minilm_fp32, backend="onnx")


def test_cli_export(tiny_st_dir, tmp_path):
    out = tmp_path / "cli-onnx"
    proc = subprocess.run([sys.executable, "-m", "embedhub", "export", str(tiny_st_dir), "--output", str(out),
                           "--quantize", "int8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parity gate (int8)" in proc.stdout
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["gate"]["passed"]
    # progress on stderr: the int8 calibration's batches (to the end) and the parity gate's inputs
    calibration = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "int8 calibration" in line]
    assert calibration and "100%" in calibration[-1], proc.stderr[-2000:]
    assert "parity gate (int8)" in proc.stderr and "input/s" in proc.stderr
    # no torch copy unless asked: the folder holds what backend="onnx" needs
    assert not meta["torch_weights_kept"] and not list(out.rglob("*.safetensors"))
    assert embedhub.load(out, backend="onnx").encode(["a b c"]).shape == (1, 32)


def test_cli_export_keep_torch_and_quiet(tiny_st_dir, tmp_path):
    out = tmp_path / "cli-torch"
    proc = subprocess.run([sys.executable, "-m", "embedhub", "export", str(tiny_st_dir), "--output", str(out),
                           "--keep-torch", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and "parity gate" not in proc.stderr and "%|" not in proc.stderr
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert meta["torch_weights_kept"] and (out / "model.safetensors").is_file()
    torch_model, onnx_model = embedhub.load(out, backend="torch"), embedhub.load(out, backend="onnx")
    np.testing.assert_allclose(onnx_model.encode(["a b c"]), torch_model.encode(["a b c"]), atol=1e-5)
    # both backends of one export name one source
    assert torch_model.fingerprint.differences(onnx_model.fingerprint) == {"backend": ("torch", "onnx")}
    both = subprocess.run([sys.executable, "-m", "embedhub", "export", str(tiny_st_dir), "--output", str(out),
                           "--keep-torch", "--no-torch-weights"], capture_output=True, text=True, timeout=600)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_fp16_export_has_half_weights_and_passes_its_gate(tiny_st_dir, tmp_path):
    import onnx

    out = export(tiny_st_dir, tmp_path / "fp16", dtype="fp16", verbose=False)
    graph = onnx.load(str(out / "onnx" / "text.onnx")).graph
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    kinds = {i.data_type for i in graph.initializer if len(i.dims) == 2 and i.data_type in floats}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert meta["precision"] == "fp16" and meta["gate"]["thresholds"] == GATES["fp16"]
    model = embedhub.load(out, backend="onnx")
    ref = embedhub.load(tiny_st_dir, device="cpu").encode(["half precision on the CPU", "short"])
    assert _cos(model.encode(["half precision on the CPU", "short"]), ref).min() >= GATES["fp16"]["min"]


def test_per_token_int8_rewrite_beats_per_tensor_on_an_outlier_token(tmp_path):
    """The protected-node scheme of export/_int8.py: one token with large activations ruins a
    per-tensor activation scale for every other token; per-token scales keep them."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export._int8 import per_token_matmuls

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 48])],
        [numpy_helper.from_array(w, "w")])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    x = rng.normal(size=(4, 9, 64)).astype(np.float32)
    x[0, 0] *= 200  # one outlier token
    per_tensor = tmp_path / "tensor.onnx"
    quantize_dynamic(str(fp32), str(per_tensor), per_channel=True, weight_type=QuantType.QInt8)
    model = onnx.load(str(fp32))
    assert per_token_matmuls(model, {"mm"}) == 1
    assert {n.op_type for n in model.graph.node} >= {"MatMulInteger", "ReduceMax"}
    assert "w" not in {i.name for i in model.graph.initializer}  # the fp32 weight is gone
    per_token = tmp_path / "token.onnx"
    onnx.save(model, per_token)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref = (x @ w).reshape(-1, 48)
    cos_tensor = _cos(run(per_tensor).reshape(-1, 48), ref)
    cos_token = _cos(run(per_token).reshape(-1, 48), ref)
    assert cos_token.min() > 0.999, cos_token.min()
    assert cos_tensor[1:].min() < 0.99 < cos_token[1:].min()  # the other tokens lose precision per tensor


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_smoothing_keeps_the_function_and_rescues_int8_from_an_outlier_channel(tmp_path, op, monkeypatch):
    """SmoothQuant in export/_int8.py: an activation channel 50x larger than the rest makes a
    per-tensor int8 scale round every other channel coarsely. Smoothing moves that range into the
    weight row, leaves the fp32 function unchanged, and int8 of the smoothed graph is closer to it.
    Gemm carries its weight transposed (transB=1), so the scaled axis differs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from export._int8 import activation_ranges, quantize_int8, smooth

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    if op == "MatMul":
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
        weight, dims = w, ["n", 64]
    else:
        node = helper.make_node("Gemm", ["x", "w"], ["y"], name="mm", transB=1)
        weight, dims = np.ascontiguousarray(w.T), ["n", 64]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 48])], [numpy_helper.from_array(weight, "w")])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    x[:, 5] *= 50  # one outlier channel, in every row

    def run(path, inp=x):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": inp})[0]

    ranges = activation_ranges(fp32, [{"x": x[:128]}], tmp_path)
    assert ranges["x"].shape == (64,) and ranges["x"].argmax() == 5
    smoothed = tmp_path / "smooth.onnx"
    assert smooth(fp32, smoothed, ranges, 0.5) == 1
    assert {n.op_type for n in onnx.load(str(smoothed)).graph.node} == {"Mul", op}
    np.testing.assert_allclose(run(smoothed), x @ w, rtol=1e-4, atol=1e-3)  # same function

    plain, smoothed_q = tmp_path / "plain-int8.onnx", tmp_path / "smooth-int8.onnx"
    quantize_int8(fp32, plain, [{"x": x[:128]}], budget=1.0, work=tmp_path, alphas=())
    note = quantize_int8(fp32, smoothed_q, [{"x": x[:128]}], budget=1.0, work=tmp_path)
    assert "smoothing alpha None" not in note  # calibration chose to smooth
    held_out = x[128:]  # rows calibration did not see
    ref = held_out @ w
    err_plain = np.abs(run(plain, held_out) - ref).mean()
    err_smooth = np.abs(run(smoothed_q, held_out) - ref).mean()
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)

    # 7-bit weights (what CPUs without VNNI also try, against saturation): the same path, |q| <= 64
    seven = tmp_path / "smooth-int8-7bit.onnx"
    note7 = quantize_int8(fp32, seven, [{"x": x[:128]}], budget=1.0, work=tmp_path, weight_bits=(7,))
    assert "7-bit per-channel weights" in note7 and "smoothing alpha None" not in note7
    q_weights = [numpy_helper.to_array(i) for i in onnx.load(str(seven)).graph.initializer
                 if i.data_type == TensorProto.INT8]
    assert q_weights and max(int(np.abs(q.astype(np.int32)).max()) for q in q_weights) <= 64
    assert np.abs(run(seven, held_out) - ref).mean() < 0.5 * err_plain
    with pytest.raises(ValueError, match="weight_bits must hold 8 and/or 7"):
        quantize_int8(fp32, seven, [{"x": x[:128]}], budget=1.0, work=tmp_path, weight_bits=(4,))
    # which widths are tried by default follows the CPU (the probe's answer is set here: the CPU is not ours to pick)
    import embedhub.modules

    for kernel, widths in (("no-vnni", ("8-bit", "7-bit")), ("vnni", ("8-bit",))):
        monkeypatch.setattr(embedhub.modules, "int8_dot_kernel", lambda kernel=kernel: kernel)
        note = quantize_int8(fp32, seven, [{"x": x[:128]}], budget=1.0, work=tmp_path)
        assert {w for w in ("8-bit", "7-bit") if f"None/{w}" in note} == set(widths), note


def test_int8_model_warns_on_a_cpu_unlike_its_gate(minilm_int8, tmp_path, monkeypatch):
    """An int8 export records the CPU its gate ran on. Loaded on an x86 CPU without VNNI after being
    gated on one with it, the model warns (onnxruntime's AVX2 int8 kernels can saturate). Which CPU
    this is cannot be chosen here, so the test rewrites the metadata and the CPU probe's answer."""
    import shutil
    import warnings

    import embedhub.modules.backends as backends

    meta = json.loads((minilm_int8 / "onnx" / "export_metadata.json").read_text())
    assert meta["cpu"]["int8_dot_kernel"] == backends.int8_dot_kernel()  # the CPU the gate ran on
    folder = tmp_path / "int8"
    shutil.copytree(minilm_int8, folder)
    meta["cpu"]["int8_dot_kernel"] = "vnni"
    (folder / "onnx" / "export_metadata.json").write_text(json.dumps(meta))
    from embedhub._io.manifest import record

    record(folder)  # the folder as an export on that CPU would have recorded it
    monkeypatch.setattr(backends, "int8_dot_kernel", lambda: "no-vnni")
    with pytest.warns(UserWarning, match="passed its parity gate on a CPU with VNNI, but this CPU has none"):
        embedhub.load(folder, backend="onnx")
    monkeypatch.setattr(backends, "int8_dot_kernel", lambda: "vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedhub.load(folder, backend="onnx")  # same kind of CPU: no warning


def test_int8_progress_bars_count_every_run_and_node_and_are_silent_unless_shown(open_clip_dir, tiny_st_dir, tmp_path,
                                                                               capfd):
    """A tiny error budget (1e-5; the tiny CLIP's towers quantise with errors of 2e-5 to 4e-4) makes the
    calibration score each quantisable node alone: its bar counts every node of each tower;
    ``show_progress_bar=True`` shows the bars on stderr even when ``verbose=False``, and ``verbose=False``
    alone shows nothing."""
    import re

    out = export(open_clip_dir, tmp_path / "int8", quantize="int8", int8_error_budget=1e-5, verbose=False,
                 show_progress_bar=True)
    captured = capfd.readouterr()
    assert captured.out == ""
    err = captured.err.replace("\r", "\n")
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    done = {int(a) for a, b in re.findall(r"int8 sensitivity per node: 100%\S* (\d+)/(\d+)", err) if a == b}
    quantisable = {int(re.search(r"\d+/(\d+) nodes quantised per tensor", steps[-1]["note"]).group(1))
                   for steps in meta["steps"].values()}
    assert done == quantisable and min(done) > 0, err[-2000:]  # one step per quantisable node of each tower
    runs = re.findall(r"int8 calibration: 100%\S* (\d+)/(\d+) \[", err)
    assert runs and all(a == b for a, b in runs), err[-2000:]
    assert re.search(r"parity gate \(int8\): 100%\S* (\d+)/\1 ", err), err[-2000:]
    export(tiny_st_dir, tmp_path / "quiet", quantize="int8", verbose=False)
    assert capfd.readouterr().err == ""
