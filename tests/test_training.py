"""The training loop: parity with open_clip's loss on a tiny from-scratch CLIP, resume after kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from embedhub.losses import ClipLoss  # noqa: E402
from training.config import ClipConfig, load_config  # noqa: E402
from training.loop import Trainer, lr_factor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def _digits_batches(n_batches: int, batch: int, seed: int):
    """Real handwritten digits (scikit-learn), upscaled to 32 px, with template captions."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = torch.from_numpy(d.images).float().div(16).unsqueeze(1).repeat(1, 3, 1, 1)
    imgs = torch.nn.functional.interpolate(imgs, size=32, mode="bilinear", align_corners=False)
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    texts = tok([f"a photo of the digit {words[y]}" for y in d.target])
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(imgs), generator=g)
    return [(imgs[order[i * batch:(i + 1) * batch]], texts[order[i * batch:(i + 1) * batch]])
            for i in range(n_batches)]


def test_lr_schedule_shape():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 0.002\nepochs: 3\ntemplates: ['a {}', 'the {}']\n")
    cfg = load_config(ClipConfig, y, ["epochs=5", "freeze_text=false"])
    assert (cfg.lr, cfg.epochs, cfg.templates, cfg.freeze_text) == (0.002, 5, ("a {}", "the {}"), False)
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        load_config(ClipConfig, None, ["lrr=1"])


def test_clip_recipe_matches_open_clip_cliploss_for_50_steps(tmp_path):
    steps, batch = 50, 32
    data = _digits_batches(steps, batch, seed=0)
    torch.manual_seed(0)
    ours = open_clip.CLIP(**TINY)
    theirs = open_clip.CLIP(**TINY)
    theirs.load_state_dict(ours.state_dict())
    cfg = ClipConfig(output=str(tmp_path / "ours"), epochs=1, batch_size=batch, lr=5e-4, weight_decay=0.2,
                     warmup_steps=10, grad_clip=1.0, checkpoint_every=0, threads=2)

    def loss_fn(model, b):
        i, t, s = model(*b)
        return ClipLoss()(i, t, s)

    Trainer(cfg, ours, loss_fn, lambda epoch: iter(data), steps).fit()
    our_losses = [json.loads(x)["loss"] for x in (tmp_path / "ours" / "log.jsonl").read_text().splitlines()
                  if "loss" in json.loads(x)]

    # open_clip's training recipe, written out: param groups, cosine lr with warmup, clip, clamp
    decay = [p for n, p in theirs.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in theirs.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.2}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    loss_peer = open_clip.ClipLoss()
    ref = []
    theirs.train()
    for step, (img, txt) in enumerate(data):
        lr = 5e-4 * (step + 1) / 10 if step < 10 else 0.5 * (1 + math.cos(math.pi * (step - 10) / (steps - 10))) * 5e-4
        for g in opt.param_groups:
            g["lr"] = lr
        i, t, s = theirs(img, txt)
        loss = loss_peer(i, t, s)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            theirs.logit_scale.clamp_(0, math.log(100))
        ref.append(loss.item())
    assert len(our_losses) == steps
    np.testing.assert_allclose(our_losses, ref, atol=1e-4)
    assert ref[-1] < ref[0] - 0.5  # it learned something


_RESUME_SCRIPT = r"""
import json, sys, torch, open_clip
sys.path.insert(0, sys.argv[3])
from tests.test_training import TINY, _digits_batches
from training.config import ClipConfig
from training.loop import Trainer
from embedhub.losses import ClipLoss
torch.manual_seed(0)
model = open_clip.CLIP(**TINY)
data = _digits_batches(40, 32, seed=0)
cfg = ClipConfig(output=sys.argv[1], epochs=3, batch_size=32, lr=5e-4, warmup_steps=5, checkpoint_every=7,
                 resume=sys.argv[2] == "resume", threads=1)
def loss_fn(m, b):
    i, t, s = m(*b)
    return ClipLoss()(i, t, s)
def batches(epoch):
    g = torch.Generator().manual_seed(epoch)
    return iter([data[i] for i in torch.randperm(len(data), generator=g)])
def evaluate(m):
    with torch.no_grad():
        i, t, s = m(*data[0])
        return {"loss0": float(ClipLoss()(i, t, s))}
print("FINAL" + json.dumps(Trainer(cfg, model, loss_fn, batches, len(data), evaluate).fit()))
"""


def _final(proc_out: str) -> dict:
    line = next(x for x in proc_out.splitlines() if x.startswith("FINAL"))
    return json.loads(line[5:])


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(tmp_path / "full"), "fresh", str(ROOT)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _RESUME_SCRIPT, str(run), "fresh", str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until a mid-run checkpoint exists (step 49 of 120), then kill -9
        meta = run / "checkpoint" / "state.json"
        if meta.is_file() and json.loads(meta.read_text())["step"] >= 49:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    assert 0 < step_at_kill < 120
    resumed = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(run), "resume", str(ROOT)],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step" in resumed.stdout
    assert _final(resumed.stdout)["loss0"] == pytest.approx(_final(full.stdout)["loss0"], abs=1e-5)
    full_log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    res_log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    last_full = [r["loss"] for r in full_log if "loss" in r][-1]
    last_res = [r["loss"] for r in res_log if "loss" in r][-1]
    assert last_res == pytest.approx(last_full, abs=1e-5)
