"""Model cards: written by ``embedhub.hub.card`` with huggingface_hub's classes, read back by
``huggingface_hub.ModelCard.load``; the usage snippet of each card is run as written.

The snippet loads the model by its Hub repo id. The public Hub cannot be reached here, so the saved
model folder is placed in the cache layout ``huggingface_hub`` itself reads
(``models--org--name/{refs,snapshots}``) under a temporary ``HF_HOME`` and the snippet runs with
``HF_HUB_OFFLINE=1``: everything from ``embedhub.load("org/name")`` on is the real code path.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

import embedhub
from embedhub.hub.card import (
    MODALITY_TAGS,
    Result,
    card_results,
    linked_images,
    pipeline_tag_for,
    read_card,
    usage_snippet,
    write_card,
)

STS = [
    Result("sentence-similarity", "STS Benchmark", "mteb/stsbenchmark-sts", "spearman", 0.8123, metric_name="Spearman"),
    Result("sentence-similarity", "STS Benchmark", "mteb/stsbenchmark-sts", "pearson", 0.7988, split="validation"),
]
CLIP = [
    Result("zero-shot-image-classification", "Fashion-MNIST", "fashion_mnist", "accuracy", 0.7121,
           metric_name="zero-shot top-1"),
    Result("image-text-retrieval", "Fashion-MNIST captions", "fashion_mnist", "recall@1", 0.4375),
]
CONFIG = {"recipe": "lit", "epochs": 3, "lr": 0.0005, "batch_size": 256, "towers": {"image": "efficientnet_lite0"}}
SHA = "c" * 40


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory, tiny_st_dir) -> Path:
    """A tiny text model saved in embedhub's format (loaded from a real sentence-transformers folder)."""
    folder = tmp_path_factory.mktemp("card_text")
    embedhub.load(tiny_st_dir, device="cpu").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, tiny_embedhub_dir) -> Path:
    """A copy of the tiny text+image model in embedhub's format (the card is written into it)."""
    folder = tmp_path_factory.mktemp("card_clip") / "model"
    shutil.copytree(tiny_embedhub_dir, folder)
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, image_only) -> Path:
    folder = tmp_path_factory.mktemp("card_image")
    image_only.save_pretrained(folder)
    return folder


def _plot(path: Path) -> Path:
    """A real PNG: a loss curve drawn with PIL."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (160, 90), "white")
    points = [(10 + 14 * i, 80 - int(60 * math.exp(-i / 3))) for i in range(11)]
    ImageDraw.Draw(img).line(points, fill=(30, 90, 200), width=2)
    img.save(path)
    return path


def _code_block(text: str, lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, f"expected one ```{lang} block, found {len(blocks)}"
    return blocks[0]


def _eval_tuples(card: ModelCard) -> list[tuple]:
    return [
        (e.task_type, e.dataset_name, e.dataset_type, e.dataset_split, e.metric_type, e.metric_value, e.metric_name)
        for e in card.data.eval_results
    ]


def _given_tuples(results: list[Result]) -> list[tuple]:
    return [(r.task_type, r.dataset_name, r.dataset_type, r.split, r.metric_type, r.value, r.metric_name)
            for r in results]


def test_text_card_metadata_model_index_config_and_plot(text_folder, tmp_path):
    plot = _plot(tmp_path / "training_curve.png")  # outside the model folder: copied in
    path = write_card(text_folder, model_id="acme/tiny-sts", modalities=("text",), embed_dim=32,
                      base_model="sentence-transformers/all-MiniLM-L6-v2", datasets=["sentence-transformers/stsb"],
                      tags=["sentence-embeddings"], results=STS, training_config=CONFIG, plot=plot)
    assert path == text_folder / "README.md"

    card = ModelCard.load(path)
    meta = yaml.safe_load(path.read_text().split("---\n")[1])
    assert meta["library_name"] == card.data.library_name == "embedhub"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["sentence-transformers/stsb"]
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["embedhub", "text-embedding", "sentence-embeddings"]
    assert meta["model-index"][0]["name"] == "acme/tiny-sts"
    assert _eval_tuples(card) == _given_tuples(STS)
    assert card_results(read_card(text_folder)) == STS

    assert yaml.safe_load(_code_block(card.text, "yaml")) == CONFIG
    assert "| sentence-similarity | STS Benchmark (`mteb/stsbenchmark-sts`) | test | Spearman | 0.8123 |" in card.text
    assert "![training curve](training_curve.png)" in card.text
    assert (text_folder / "training_curve.png").read_bytes() == plot.read_bytes()
    assert linked_images(text_folder) == ["training_curve.png"]
    assert 'embedhub.load("acme/tiny-sts")' in _code_block(card.text, "python")


def test_text_image_card(clip_folder):
    write_card(clip_folder, model_id="acme/tiny-lit", modalities=("image", "text"), embed_dim=32,
               base_model="timm/resnet10t", datasets=["fashion_mnist"], results=CLIP,
               training_config="recipe: lit\nepochs: 1\n", description="A tiny LiT model.")
    card = ModelCard.load(clip_folder / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert card.data.tags == ["embedhub", MODALITY_TAGS["text"], MODALITY_TAGS["image"]]
    assert card.data.base_model == "timm/resnet10t" and card.data.datasets == ["fashion_mnist"]
    assert _eval_tuples(card) == _given_tuples(CLIP)
    assert yaml.safe_load(_code_block(card.text, "yaml")) == {"recipe": "lit", "epochs": 1}
    assert "A tiny LiT model." in card.text and "zero_shot(" in card.text
    assert "training curve" not in card.text and linked_images(clip_folder) == []


def test_card_without_results_has_no_model_index(text_folder, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(text_folder, folder)
    write_card(folder, model_id="acme/bare", modalities=["text"])
    meta = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert "model-index" not in meta and "base_model" not in meta
    assert card_results(read_card(folder)) == []


@pytest.mark.parametrize(("modalities", "tag"), [
    (("text",), "sentence-similarity"),
    (("text", "image"), "zero-shot-image-classification"),
    (("image", "text"), "zero-shot-image-classification"),
    (("image",), "feature-extraction"),
])
def test_pipeline_tag(modalities, tag):
    assert pipeline_tag_for(modalities) == tag


_RUNNER = r"""
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
        out[path] = buf.getvalue()
    except Exception as exc:
        out[path] = f"FAILED {type(exc).__name__}: {exc}"
print("RESULT" + json.dumps(out))
"""


def test_usage_snippets_run_as_written(tmp_path, text_folder, clip_folder, image_folder):
    """Each card's ```python block, unchanged, loads the model by repo id (offline cache) and prints
    exactly what its comments claim."""
    hf_home = tmp_path / "hf_home"
    cases = {"acme/tiny-sts": (text_folder, ("text",), 32), "acme/tiny-lit": (clip_folder, ("text", "image"), 32),
             "acme/tiny-img": (image_folder, ("image",), 16)}
    scripts = []
    for repo_id, (folder, mods, dim) in cases.items():
        card_dir = tmp_path / repo_id.replace("/", "--")
        shutil.copytree(folder, card_dir)
        write_card(card_dir, model_id=repo_id, modalities=mods, embed_dim=dim)
        snippet = _code_block(read_card(card_dir).text, "python")
        assert snippet == usage_snippet(repo_id, mods, embed_dim=dim)
        repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(card_dir, repo / "snapshots" / SHA)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SHA)
        script = tmp_path / f"{repo_id.split('/')[1]}.py"
        script.write_text(snippet)
        scripts.append((script, snippet))

    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *(str(s) for s, _ in scripts)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]

    outputs = json.loads(line[len("RESULT"):])
    for script, snippet in scripts:
        printed = outputs[str(script)]
        assert not printed.startswith("FAILED"), f"{script.name}: {printed}"
        claims = re.findall(r"^print\(.*\)  # (.+)$", snippet, flags=re.M)
        assert len(claims) >= 1 and len(claims) == snippet.count("print(")
        assert printed.splitlines() == claims, script.name
    assert outputs[str(scripts[0][0])].splitlines()[0] == "(3, 32)"
    assert outputs[str(scripts[1][0])].splitlines()[2:4] == ["(3,)", "1.0"]
    assert outputs[str(scripts[2][0])].splitlines() == ["(1, 16)"]


def _result(**change):
    fields = {"task_type": "sentence-similarity", "dataset_name": "STS Benchmark",
              "dataset_type": "mteb/stsbenchmark-sts", "metric_type": "spearman", "value": 0.8}
    return Result(**{**fields, **change})


@pytest.mark.parametrize(("change", "field"), [
    ({"value": float("nan")}, "Result.value"),
    ({"value": float("inf")}, "Result.value"),
    ({"value": "0.8"}, "Result.value"),
    ({"value": True}, "Result.value"),
    ({"dataset_name": ""}, "Result.dataset_name"),
    ({"metric_type": "  "}, "Result.metric_type"),
    ({"task_type": None}, "Result.task_type"),
    ({"split": "te\nst"}, "Result.split"),
    ({"metric_name": ""}, "Result.metric_name"),
])
def test_bad_result_refused(change, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        _result(**change)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"model_id": ""}, "model_id"),
    ({"modalities": ("audio",)}, "modalities"),
    ({"modalities": ()}, "modalities"),
    ({"modalities": "text"}, "modalities"),
    ({"datasets": "fashion_mnist"}, "datasets"),
    ({"tags": ["ok", ""]}, "tags[1]"),
    ({"license": ""}, "license"),
    ({"base_model": ""}, "base_model"),
    ({"results": [_result(), _result(value=0.7)]}, "results[1]"),
    ({"results": [("sentence-similarity", "STS", "stsb", "spearman", 0.8)]}, "results[0]"),
    ({"training_config": {"lr": float("nan")}}, "training_config"),
    ({"training_config": {"model": object()}}, "training_config"),
    ({"plot": "missing.png"}, "plot"),
    ({"plot": "notes.txt"}, "plot"),
    ({"embed_dim": 0}, "embed_dim"),
])
def test_bad_card_values_refused_and_nothing_written(tmp_path, kwargs, field):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    args = {"model_id": "acme/x", "modalities": ("text",), **kwargs}
    with pytest.raises(ValueError, match=re.escape(field)):
        write_card(folder, **args)
    assert not (folder / "README.md").exists()
