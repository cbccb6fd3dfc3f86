"""Model saves and ONNX exports delete only what embedhub wrote, never follow a symlink, and switch atomically.

Every folder embedhub saves or exports into holds ``.embedhub_files.json`` (path, size, SHA-256 of each file
it wrote, renamed into place last). These probes use real tiny models written by their own libraries.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub
from embedhub import ConfigError

MANIFEST = ".embedhub_files.json"
TEXTS = ["a small test sentence", "another one about cats"]


# ----------------------------------------------------------------------------------------------------- helpers
def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def add_user_files(folder: Path) -> dict[str, bytes]:
    """The files a user keeps in a model folder: notes, metrics, eval results and a safetensors file of theirs."""
    from safetensors.torch import save_file

    (folder / "eval").mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "metrics.json").write_text('{"spearman": 0.8}\n')
    (folder / "eval" / "results.json").write_text('{"ndcg@10": 0.5}\n')
    save_file({"w": torch.ones(3)}, str(folder / "my_adapter.safetensors"))
    return {rel: (folder / rel).read_bytes() for rel in
            ("notes.txt", "metrics.json", "eval/results.json", "my_adapter.safetensors")}


def assert_kept(folder: Path, user: dict[str, bytes]) -> None:
    for rel, data in user.items():
        assert (folder / rel).read_bytes() == data, rel


def no_staging_left(folder: Path) -> None:
    left = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert not left, left


def embeddings(model, photos) -> dict[str, np.ndarray]:
    out = {}
    if "text" in model.modalities:
        out["text"] = model.encode(TEXTS, show_progress_bar=False)
    if "image" in model.modalities:
        out["image"] = model.encode(photos[:2], show_progress_bar=False)
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.abs(a[k] - b[k]).max() < 1e-5 for k in a)


def perturbed(folder: Path, seed: int):
    """The model of ``folder`` with every floating parameter moved by seeded noise: another model."""
    model = embedhub.load(folder, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tower in model.towers.values():
            for p in tower.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory, tiny_embedhub_dir, photos):
    """Model A (text + image) saved, with user files, and model B (both towers moved), saved elsewhere."""
    root = tmp_path_factory.mktemp("two")
    a = embedhub.load(tiny_embedhub_dir, device="cpu")
    a_dir = a.save_pretrained(root / "a")
    b = perturbed(tiny_embedhub_dir, seed=3)
    b_dir = b.save_pretrained(root / "b")
    ea, eb = embeddings(a, photos), embeddings(b, photos)
    assert all(np.abs(ea[k] - eb[k]).max() > 1e-2 for k in ea)
    return a_dir, b, b_dir, ea, eb


# ------------------------------------------------------------------------------------------- user files stay
def test_resave_keeps_user_files_and_removes_only_the_old_models_files(tiny_st_dir, image_only, tmp_path, photos):
    text = embedhub.load(tiny_st_dir, device="cpu")
    folder = text.save_pretrained(tmp_path / "m")
    record = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(record) == set(files_of(folder)) - {MANIFEST} and "text/model.safetensors" in record
    user = add_user_files(folder)
    text.save_pretrained(folder)  # the same model again
    assert_kept(folder, user)
    image_only.save_pretrained(folder)  # another model: the text model's files go, the user's stay
    assert_kept(folder, user)
    assert not (folder / "text").exists() and not (folder / "modules.json").exists()
    assert set(files_of(folder)) == set(json.loads((folder / MANIFEST).read_text())["files"]) | set(user) | {MANIFEST}
    again = embedhub.load(folder, device="cpu")
    assert same(embeddings(again, photos), embeddings(image_only, photos))
    no_staging_left(folder)


def test_folder_without_a_record_loses_only_model_files_by_exact_name(tiny_st_dir, image_only, tmp_path):
    """An embedhub folder written before records existed: a re-save deletes no user file, whatever its name."""
    folder = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m")
    (folder / MANIFEST).unlink()
    user = add_user_files(folder)
    (folder / "text" / "my_tokens.json").write_text("[1, 2]")  # a user's json inside a tower folder
    user["text/my_tokens.json"] = b"[1, 2]"
    (folder / "config.json").write_text('{"lr": 0.1}')  # a training config: embedhub's format has no config.json
    user["config.json"] = b'{"lr": 0.1}'
    image_only.save_pretrained(folder)
    assert_kept(folder, user)
    assert not (folder / "text" / "model.safetensors").exists() and not (folder / "modules.json").exists()
    assert embedhub.load(folder, device="cpu").modalities == ("image",)


def test_reexport_keeps_user_files_and_loads_the_new_export(tiny_st_dir, other_st_dir, tmp_path):
    from export import export

    kw = dict(verbose=False, gate_texts=TEXTS * 2, batch_sizes=(3,))
    out = export(tiny_st_dir, tmp_path / "onnx", keep_torch=True, **kw)
    assert (out / "model.safetensors").is_file()
    assert "onnx/text.onnx" in json.loads((out / MANIFEST).read_text())["files"]
    user = add_user_files(out)
    (out / "onnx" / "my_graph_notes.json").write_text("{}")
    user["onnx/my_graph_notes.json"] = b"{}"
    export(other_st_dir, out, keep_torch=False, **kw)  # without torch weights this time
    assert_kept(out, user)
    assert not (out / "model.safetensors").exists() and not (out / "text" / "model.safetensors").exists()
    ref = embedhub.load(other_st_dir, device="cpu").encode(TEXTS)
    got = embedhub.load(out, backend="onnx", device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    no_staging_left(out)


# -------------------------------------------------------------------------------------------------- symlinks
def test_symlink_at_a_file_the_save_writes_is_not_followed(tiny_st_dir, other_st_dir, tmp_path):
    model = embedhub.load(tiny_st_dir, device="cpu")
    folder = model.save_pretrained(tmp_path / "m")
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"not yours")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside)
    before = files_of(folder)
    with pytest.raises(FileExistsError, match="model.safetensors.*symlink"):
        embedhub.load(other_st_dir, device="cpu").save_pretrained(folder)
    assert outside.read_bytes() == b"not yours" and (folder / "model.safetensors").is_symlink()
    assert files_of(folder) == before
    no_staging_left(folder)


def test_symlink_at_a_listed_file_the_new_save_drops_is_left(tiny_st_dir, image_only, tmp_path):
    folder = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m")
    outside = tmp_path / "precious.json"
    outside.write_text("{}")
    (folder / "modules.json").unlink()
    (folder / "modules.json").symlink_to(outside)
    with pytest.warns(UserWarning, match="modules.json"):
        image_only.save_pretrained(folder)
    assert outside.read_text() == "{}" and (folder / "modules.json").is_symlink()
    assert embedhub.load(folder, device="cpu").modalities == ("image",)


def test_symlinked_subfolder_is_not_written_through(tiny_st_dir, other_st_dir, tmp_path):
    folder = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m")
    outside = tmp_path / "elsewhere"
    shutil.move(folder / "text", outside)
    (folder / "text").symlink_to(outside, target_is_directory=True)
    snapshot = {p.name: p.read_bytes() for p in outside.iterdir()}
    with pytest.raises(FileExistsError, match="text.*symlink"):
        embedhub.load(other_st_dir, device="cpu").save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == snapshot
    # a listed file of a symlinked sub-folder is not deleted through it either
    folder2 = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m2")
    outside2 = tmp_path / "elsewhere2"
    shutil.move(folder2 / "1_Pooling", outside2)
    (folder2 / "1_Pooling").symlink_to(outside2, target_is_directory=True)
    from embedhub.formats import save_embedhub

    with pytest.warns(UserWarning, match="1_Pooling/config.json"):
        save_embedhub(_image_model(), folder2)
    assert (outside2 / "config.json").is_file()


def _image_model():
    timm = pytest.importorskip("timm")
    from embedhub import EmbeddingModel
    from embedhub.modules import Head, ImageConfig, ImagePreprocessor, TimmImageTower

    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    tower = TimmImageTower(backbone, Head([{"in_features": backbone.num_features, "out_features": 8}]))
    return EmbeddingModel({"image": tower}, {"image": ImagePreprocessor(ImageConfig(size=32, crop_size=(32, 32)))},
                          embed_dim=8, name="img", format="embedhub")


# ------------------------------------------------------------------------------------- CLIP over CLIP
def _clip_folders(hf_clip_dir: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """A: a transformers-4 style CLIP folder (preprocessor_config.json), other weights and other image
    normalisation; B: the same architecture, transformers-5 style (processor_config.json only)."""
    from safetensors.torch import load_file, save_file

    b = tmp_path / "clip_b"
    shutil.copytree(hf_clip_dir, b)
    image_cfg = None
    if (b / "preprocessor_config.json").exists():
        image_cfg = json.loads((b / "preprocessor_config.json").read_text())
        (b / "preprocessor_config.json").unlink()
        proc = json.loads((b / "processor_config.json").read_text()) if (b / "processor_config.json").exists() else {}
    else:
        proc = json.loads((b / "processor_config.json").read_text())
        image_cfg = proc["image_processor"]
    image_cfg = {**image_cfg, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.2, 0.2]}
    (b / "processor_config.json").write_text(json.dumps({**proc, "image_processor": image_cfg}))
    a = tmp_path / "clip_a"
    shutil.copytree(hf_clip_dir, a)
    (a / "processor_config.json").unlink(missing_ok=True)
    a_cfg = {**image_cfg, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]}
    a_cfg.pop("processor_class", None)
    (a / "preprocessor_config.json").write_text(json.dumps({**a_cfg, "image_processor_type": "CLIPImageProcessor"}))
    state = load_file(str(a / "model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in state.items()}, str(a / "model.safetensors"), metadata={"format": "pt"})
    return a, b, image_cfg


def _transformers_image_features(folder: Path, image_cfg: dict, photos) -> np.ndarray:
    import transformers

    model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    keys = ("size", "crop_size", "image_mean", "image_std", "resample", "do_resize", "do_center_crop",
            "do_normalize", "do_rescale", "rescale_factor")
    processor = transformers.CLIPImageProcessor(**{k: image_cfg[k] for k in keys if k in image_cfg})
    pixels = processor(images=photos[:2], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    out = getattr(out, "pooler_output", out)
    out = out.numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("target_kind", ["saved-by-transformers", "saved-by-embedhub"])
def test_clip_over_clip_leaves_no_stale_preprocessor_config(target_kind, hf_clip_dir, tmp_path, photos):
    a, b, b_image_cfg = _clip_folders(hf_clip_dir, tmp_path)
    target = tmp_path / "target"
    if target_kind == "saved-by-transformers":
        shutil.copytree(a, target)
    else:
        embedhub.load(a, device="cpu").save_pretrained(target)
    user = add_user_files(target)
    embedhub.load(b, device="cpu").save_pretrained(target)
    assert not (target / "preprocessor_config.json").exists()
    assert_kept(target, user)
    got = embedhub.load(target, device="cpu").encode(photos[:2])
    ref = _transformers_image_features(b, b_image_cfg, photos)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    a_ref = embedhub.load(a, device="cpu").encode(photos[:2])
    assert np.abs(got - a_ref).max() > 1e-2  # the probe tells the two models apart


def test_unlisted_file_the_loader_would_read_is_refused(hf_clip_dir, tmp_path):
    _, b, image_cfg = _clip_folders(hf_clip_dir, tmp_path)
    target = embedhub.load(b, device="cpu").save_pretrained(tmp_path / "t")
    (target / "preprocessor_config.json").write_text(json.dumps({**image_cfg, "image_mean": [0.0, 0.0, 0.0]}))
    with pytest.raises(ConfigError, match=r"preprocessor_config.json is not one of the files embedhub wrote"):
        embedhub.load(target, device="cpu")
    (target / "preprocessor_config.json").unlink()
    embedhub.load(target, device="cpu")  # the advice (move it out) works


# ------------------------------------------------------------------------------------------ tampering
def test_tampered_listed_file_is_refused_and_a_resave_repairs_it(two_tower, tmp_path, photos):
    a_dir, b, _, ea, eb = two_tower
    folder = tmp_path / "m"
    shutil.copytree(a_dir, folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-2] ^= 0x01  # the low mantissa bits of the last float: still a finite, loadable number
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"model.safetensors has SHA-256 .* save or export the model into") as err:
        embedhub.load(folder, device="cpu")
    assert err.value.file.endswith("model.safetensors")
    (folder / "text" / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json"):
        embedhub.load(folder, device="cpu")
    b.save_pretrained(folder)
    assert same(embeddings(embedhub.load(folder, device="cpu"), photos), eb)


def test_malformed_record_is_a_config_error_naming_the_key(two_tower, tmp_path):
    a_dir = two_tower[0]
    folder = tmp_path / "m"
    shutil.copytree(a_dir, folder)
    rec = json.loads((folder / MANIFEST).read_text())
    rec["files"]["../../etc/passwd"] = {"size": 1, "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(rec))
    with pytest.raises(ConfigError, match=r"files\['\.\./\.\./etc/passwd'\]: expected a relative path"):
        embedhub.load(folder, device="cpu")
    (folder / MANIFEST).write_text("[1, 2")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        embedhub.load(folder, device="cpu")


# ------------------------------------------------------------------------------------------ interrupts
class _Interrupt:
    """Counts os.replace / os.unlink calls and raises KeyboardInterrupt at call ``k`` (0: never)."""

    def __init__(self, monkeypatch, k: int):
        self.k, self.n = k, 0
        for name in ("replace", "unlink"):
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, fn):
        def op(*args, **kwargs):
            self.n += 1
            if self.n == self.k:
                raise KeyboardInterrupt
            return fn(*args, **kwargs)

        return op


def _check_a_or_b_or_refused(folder: Path, ea: dict, eb: dict, photos) -> str:
    try:
        loaded = embedhub.load(folder, device="cpu")
    except ConfigError as exc:
        recorded = set(json.loads((folder / MANIFEST).read_text()).get("files", {}))
        recorded |= set(json.loads((folder / MANIFEST).read_text()).get("pending", {}))
        assert any(rel in str(exc) for rel in recorded), str(exc)
        return "refused"
    got = embeddings(loaded, photos)
    if same(got, ea):
        return "A"
    assert same(got, eb), "the folder loads as neither model A nor model B"
    return "B"


@pytest.mark.parametrize("b_kind", ["two-tower", "text-only"])
def test_interrupt_at_every_file_operation_leaves_a_or_b_or_a_clear_refusal(b_kind, two_tower, other_st_dir,
                                                                              tmp_path, photos):
    a_dir, b, _, ea, eb = two_tower
    if b_kind == "text-only":
        b = embedhub.load(other_st_dir, device="cpu")
        eb = embeddings(b, photos)
    pristine = tmp_path / "pristine"
    shutil.copytree(a_dir, pristine)
    user = add_user_files(pristine)
    with pytest.MonkeyPatch.context() as mp:  # a full save, counted
        counter = _Interrupt(mp, 0)
        shutil.copytree(pristine, tmp_path / "count")
        b.save_pretrained(tmp_path / "count")
        total = counter.n
    assert total >= 8
    outcomes = []
    for k in range(1, total + 1):
        folder = tmp_path / f"k{k}"
        shutil.copytree(pristine, folder)
        with pytest.MonkeyPatch.context() as mp:
            _Interrupt(mp, k)
            with pytest.raises(KeyboardInterrupt):
                b.save_pretrained(folder)
        no_staging_left(folder)
        outcomes.append(_check_a_or_b_or_refused(folder, ea, eb, photos))
        assert_kept(folder, user)
        if k % 3 == 0 or outcomes[-1] == "refused" and "refused" not in outcomes[:-1]:
            b.save_pretrained(folder)  # the advice of the refusal: save again
            assert same(embeddings(embedhub.load(folder, device="cpu"), photos), eb)
            assert_kept(folder, user)
        shutil.rmtree(folder)
    assert outcomes[0] == "A" and "refused" in outcomes, outcomes


_KILL_CHILD = textwrap.dedent("""
    import os, signal, sys
    import embedhub

    model = embedhub.load(sys.argv[1], device="cpu")
    k, n = int(sys.argv[3]), [0]

    def hit(fn):
        def op(*args, **kwargs):
            n[0] += 1
            if n[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return op

    os.replace, os.unlink = hit(os.replace), hit(os.unlink)
    model.save_pretrained(sys.argv[2])
    print("completed")
""")


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_save_killed_with_sigkill_leaves_a_or_b_or_a_clear_refusal(seed, two_tower, tmp_path, photos):
    a_dir, b, b_dir, ea, eb = two_tower
    folder = tmp_path / "m"
    shutil.copytree(a_dir, folder)
    user = add_user_files(folder)
    with pytest.MonkeyPatch.context() as mp:  # how many file operations a full save takes
        counter = _Interrupt(mp, 0)
        shutil.copytree(folder, tmp_path / "count")
        b.save_pretrained(tmp_path / "count")
    k = random.Random(seed).randint(1, counter.n)
    proc = subprocess.run([sys.executable, "-c", _KILL_CHILD, str(b_dir), str(folder), str(k)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (k, proc.returncode, proc.stderr[-2000:])
    _check_a_or_b_or_refused(folder, ea, eb, photos)
    assert_kept(folder, user)
    b.save_pretrained(folder)
    assert same(embeddings(embedhub.load(folder, device="cpu"), photos), eb)
    assert_kept(folder, user)


# ---------------------------------------------------------------------------------------- staging folder
def test_staging_folder_is_beside_the_target_and_removed_after_success_and_failure(tiny_st_dir, tmp_path,
                                                                                   monkeypatch):
    model = embedhub.load(tiny_st_dir, device="cpu")
    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    target = tmp_path / "deep" / "m"
    model.save_pretrained(target)
    assert made and all(p.parent == target.parent for p in made)
    assert not any(p.exists() for p in made)
    made.clear()
    from embedhub.formats import save_embedhub

    def fail(staging: Path) -> None:
        assert staging.parent == target.parent and (staging / "embedhub_config.json").is_file()
        raise RuntimeError("gate failed")

    before = {rel: (target / rel).read_bytes() for rel in files_of(target)}
    with pytest.raises(RuntimeError, match="gate failed"):
        save_embedhub(model, target, check=fail)
    assert made and not any(p.exists() for p in made)
    assert {rel: (target / rel).read_bytes() for rel in files_of(target)} == before
    no_staging_left(target)


def test_record_is_not_uploaded_and_not_a_model_file(tiny_st_dir, tmp_path):
    from embedhub.formats import model_files
    from embedhub.hub.publish import upload_files

    folder = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m")
    assert MANIFEST not in model_files(folder) and MANIFEST not in upload_files(folder)
    record = json.loads((folder / MANIFEST).read_text())["files"]
    assert set(record) == set(model_files(folder))  # everything recorded is uploaded, so a download verifies


def test_saving_into_a_folder_another_library_wrote_touches_only_its_model_files(tmp_path):
    """An open_clip folder written by open_clip itself, holding the user's own ``config.json`` (a training
    config open_clip never reads) and notes: a re-save replaces only the files a load of it opens."""
    from conftest import save_tiny_open_clip

    target = save_tiny_open_clip(tmp_path / "target", seed=0)
    (target / "config.json").write_text('{"lr": 0.001, "epochs": 3}')
    (target / "notes.txt").write_text("mine")
    new = embedhub.load(save_tiny_open_clip(tmp_path / "new", seed=1), device="cpu")
    new.save_pretrained(target)
    assert (target / "config.json").read_text() == '{"lr": 0.001, "epochs": 3}'
    assert (target / "notes.txt").read_text() == "mine"
    again = embedhub.load(target, device="cpu")
    assert np.allclose(again.encode(["a cat"]), new.encode(["a cat"]), atol=1e-6)
