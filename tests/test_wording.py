"""Wording variety of the LiT recipe's captions: the training wording (generated from WordNet) and the held-out
evaluation wording are disjoint, and the caption sampler draws a caption of each example's own class."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from embedhub.training.config import ClipConfig
from embedhub.training.data.images import FASHION_CLASSES
from embedhub.training.data.wording import (
    WORDINGS,
    WORDNET_DIR,
    CaptionSampler,
    WordNet,
    check_disjoint,
    generate_training_wording,
    heldout_label_sets,
    load_wording,
    name_key,
    plural,
    template_key,
)
from embedhub.training.errors import ConfigValueError, DataError

TRAIN, HELDOUT = load_wording("train"), load_wording("heldout")
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_training_and_heldout_wordings_are_disjoint():
    """No held-out name is a training name (case, spacing, hyphens and plural endings ignored: "sneakers" would
    count as "sneaker"), no held-out template is a training template, and no name belongs to two classes."""
    train_names = {name_key(n) for ns in TRAIN.names.values() for n in ns}
    held_names = {name_key(n) for ns in HELDOUT.names.values() for n in ns}
    assert train_names and held_names and not train_names & held_names, train_names & held_names
    assert not {template_key(t) for t in TRAIN.templates} & {template_key(t) for t in HELDOUT.templates}
    # the captions actually trained on never are a held-out prompt either
    train_captions = {c.lower() for cls in FASHION_CLASSES for c in TRAIN.captions(cls)}
    held_prompts = {t.format(n).lower() for ns in HELDOUT.names.values() for n in ns for t in HELDOUT.templates}
    assert not train_captions & held_prompts
    check_disjoint(TRAIN, HELDOUT)
    # the check can fail: a held-out name (in another spelling) or template slipped into training is refused
    leaked = replace(TRAIN, names={**TRAIN.names, "sneaker": [*TRAIN.names["sneaker"], "Running-Shoe"]})
    with pytest.raises(DataError, match="runningshoe"):
        check_disjoint(leaked, HELDOUT)
    with pytest.raises(DataError, match="templates"):
        check_disjoint(replace(TRAIN, templates=(*TRAIN.templates, "An image of {}.")), HELDOUT)
    with pytest.raises(DataError, match="both"):
        check_disjoint(replace(TRAIN, names={**TRAIN.names, "shirt": [*TRAIN.names["shirt"], "t-shirts"]}), HELDOUT)


def test_wordings_cover_every_class_with_names_a_user_types():
    for cls in FASHION_CLASSES:
        assert TRAIN.names[cls][0] == cls  # the project's own name first
        assert plural(cls) in TRAIN.names[cls] and len(TRAIN.names[cls]) >= 10
        assert any(", a kind of " in n for n in TRAIN.names[cls])  # the WordNet hypernym
        assert len(HELDOUT.names[cls]) >= 4
    assert set(TRAIN.templates) >= set(ClipConfig().templates)  # the model's own templates are trained on
    assert "{}" in HELDOUT.templates  # a bare label, as typed into a demo
    assert heldout_label_sets(HELDOUT, FASHION_CLASSES)[1] == [HELDOUT.names[c][1] for c in FASHION_CLASSES]


def test_name_keys_and_plurals():
    assert name_key("Ankle-Boots") == name_key("ankle boot") != name_key("boots")
    assert name_key("dresses") == name_key("dress") and name_key("T shirt") == name_key("t-shirts")
    assert [plural(n) for n in ("bag", "dress", "pair of trousers", "trousers", "coat with buttons")] == \
        ["bags", "dresses", "pairs of trousers", "trousers", "coats with buttons"]


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="apt-get install wordnet-base")
def test_training_wording_file_is_generated_from_wordnet():
    wn = WordNet()
    assert wn.sense("sneaker.n.1").lemmas == ("gym shoe", "sneaker", "tennis shoe")
    assert "sweater" in wn.synset(wn.sense("pullover.n.1").hypernyms[0]).lemmas
    stored = json.loads((WORDINGS / "fashion_mnist_train.json").read_text())
    generated = generate_training_wording(wn, HELDOUT)
    assert stored["names"] == generated.names and stored["templates"] == list(generated.templates)
    # a held-out name is dropped from what WordNet gives: "sweater" is pullover's hypernym, not a training name
    assert "pullover, a kind of sweater" not in generated.names["pullover"]
    with pytest.raises(DataError, match="noun senses"):
        wn.sense("sneaker.n.9")


def test_caption_sampler_draws_each_examples_own_class_uniformly():
    sampler = CaptionSampler(TRAIN, FASHION_CLASSES)
    assert len(sampler.captions) == sum(len(ns) for ns in TRAIN.names.values()) * len(TRAIN.templates)
    labels = torch.arange(len(FASHION_CLASSES)).repeat(3000)
    idx = sampler.sample(labels, torch.Generator().manual_seed(0))
    assert torch.equal(sampler.label_of[idx], labels)
    assert torch.equal(idx, sampler.sample(labels, torch.Generator().manual_seed(0)))  # seeded: reproducible
    assert not torch.equal(idx, sampler.sample(labels, torch.Generator().manual_seed(1)))
    # every caption is one of its class's names in one of the templates, and all of them are drawn about equally
    for c, cls in enumerate(FASHION_CLASSES):
        drawn = Counter(sampler.captions[i] for i in idx[labels == c].tolist())
        assert set(drawn) == set(TRAIN.captions(cls))
        names = Counter(n for cap, k in drawn.items() for n in TRAIN.names[cls] for t in TRAIN.templates
                        if t.format(n) == cap for _ in range(k))
        expected = 3000 / len(TRAIN.names[cls])
        assert all(0.6 * expected < names[n] < 1.4 * expected for n in TRAIN.names[cls]), names


def test_wording_files_are_checked(tmp_path):
    bad = {"names": {c: [c] for c in FASHION_CLASSES if c != "bag"}, "templates": ["a {}"]}
    (tmp_path / "fashion_mnist_heldout.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="each class"):
        load_wording("heldout", tmp_path)
    bad = {"names": {c: [c] for c in FASHION_CLASSES}, "templates": ["no placeholder"]}
    (tmp_path / "fashion_mnist_heldout.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="templates"):
        load_wording("heldout", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_wording("train", tmp_path)


def test_unicl_loss_and_wording_options():
    from embedhub.training.clip import unicl_loss
    from embedhub.training.losses import clip_loss

    g = torch.Generator().manual_seed(0)
    i = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    t = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    s = torch.tensor(10.0)
    # all classes distinct: CLIP's loss; pairs sharing a class are positives: a different loss
    assert float(unicl_loss(i, t, s, torch.arange(8))) == pytest.approx(float(clip_loss(i, t, s)), rel=1e-6)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    perm = torch.randperm(8, generator=g)
    assert float(unicl_loss(i, t, s, y)) != pytest.approx(float(clip_loss(i, t, s)), rel=1e-3)
    assert float(unicl_loss(i[perm], t[perm], s, y[perm])) == pytest.approx(float(unicl_loss(i, t, s, y)), rel=1e-6)
    with pytest.raises(ConfigValueError, match="wording"):
        ClipConfig(freeze_image=False, wording="varied")
    with pytest.raises(ConfigValueError, match="label_smoothing"):
        ClipConfig(loss="siglip", label_smoothing=0.1)


def test_wording_files_that_are_not_json_files_are_refused(tmp_path):
    import os

    target = tmp_path / "fashion_mnist_heldout.json"
    target.mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_wording("heldout", tmp_path)
    target.rmdir()
    os.mkfifo(target)  # would block a plain read forever
    with pytest.raises(DataError, match="not a regular file"):
        load_wording("heldout", tmp_path)
    target.unlink()
    target.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="not valid JSON"):
        load_wording("heldout", tmp_path)
    target.write_text(" " * (2 << 20))
    with pytest.raises(DataError, match="more than"):
        load_wording("heldout", tmp_path)


@pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
def test_the_recipe_refuses_a_heldout_name_leaked_into_training(tmp_path, monkeypatch, capsys):
    """The LiT recipe checks the two wordings before it trains: a held-out name added to the training wording
    stops it with the name, where it would otherwise be trained on and inflate the held-out figure."""
    import embedhub.training.clip as clip

    train = json.loads((WORDINGS / "fashion_mnist_train.json").read_text())
    heldout = json.loads((WORDINGS / "fashion_mnist_heldout.json").read_text())
    train["names"]["coat"].append(heldout["names"]["coat"][0])
    (tmp_path / "fashion_mnist_train.json").write_text(json.dumps(train))
    (tmp_path / "fashion_mnist_heldout.json").write_text(json.dumps(heldout))
    real = clip.load_wording
    monkeypatch.setattr(clip, "load_wording", lambda which: real(which, tmp_path))
    try:
        rc = clip.main([f"output={tmp_path / 'run'}", "train_limit=300", "eval_limit=100", "image_size=32",
                        "epochs=1", "batch_size=64", "warmup_steps=1", "checkpoint_every=0"])
    except SystemExit as exc:
        rc = exc.code
    assert rc not in (0, None)
    assert f"held-out names also in training (keys): ['{heldout['names']['coat'][0]}']" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model").exists()
