"""The training loop: parity with open_clip's loss on a tiny from-scratch CLIP, resume after kill -9."""

from __future__ import annotations

import dataclasses
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

from training.config import RECIPE_CONFIGS, RULES, ClipConfig, PmrlConfig, ProtoClipConfig  # noqa: E402
from training.errors import ConfigValueError, RecipeError  # noqa: E402
from training.loop import Trainer, lr_factor, resolve_device  # noqa: E402
from training.losses import ClipLoss  # noqa: E402
from training.recipe import load_config  # noqa: E402

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
    y.write_text("lr: 2e-3\nepochs: 3\ntemplates: ['a {}', 'the {}']\nbetas: [0.8, 0.9]\n")
    cfg = load_config(ClipConfig, y, ["epochs=5", "freeze_text=false"])
    assert (cfg.lr, cfg.epochs, cfg.templates, cfg.freeze_text, cfg.betas) == (0.002, 5, ("a {}", "the {}"), False,
                                                                                (0.8, 0.9))
    with pytest.raises(RecipeError, match="unknown config key 'lrr'"):
        load_config(ClipConfig, None, ["lrr=1"])
    y.write_text("epochs: -1\n")
    with pytest.raises(ConfigValueError, match=f"^{y}: epochs=-1: expected an integer >= 1"):
        load_config(ClipConfig, y)
    y.write_text("- lr\n")
    with pytest.raises(RecipeError, match="expected a mapping of config keys"):
        load_config(ClipConfig, y)


# issue 9 item 16: each of these was accepted (or failed later with a raw traceback)
BAD_VALUES = [
    ("epochs", "-1", "an integer >= 1"),
    ("batch_size", "0", "an integer >= 1"),
    ("accum_steps", "0", "an integer >= 1"),
    ("betas", "0.9", "two numbers in [0, 1)"),
    ("lr", "-5", "a finite number > 0"),
    ("embed_dim", "-3", "an integer from 1 to 65536"),
    ("precision", "fp64", "one of fp32, bf16, fp16"),
    ("device", "banana", "auto, cpu, cuda, cuda:N or mps"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_bad_config_values_name_the_key_the_value_and_what_is_expected(key, value, expected):
    for cls in RECIPE_CONFIGS.values():
        with pytest.raises(ConfigValueError) as info:
            load_config(cls, None, [f"{key}={value}"])
        err = info.value
        assert err.key == key and err.source == f"override '{key}={value}'"
        assert str(err).startswith(f"override '{key}={value}': {key}=") and f"expected {expected}" in str(err)


def test_every_field_of_every_recipe_config_is_validated():
    """A value of the wrong type for any field of any recipe config is refused naming that field; so is a
    value of the right type outside the field's rule, for a sample of each kind of rule."""
    for cls in RECIPE_CONFIGS.values():
        for f in dataclasses.fields(cls):
            assert f.name in RULES
            with pytest.raises(ConfigValueError) as info:
                cls(**{f.name: object()})
            assert info.value.key == f.name and "object" in str(info.value)
    out_of_range = {"seed": -1, "threads": 0, "eval_pairs": -1, "templates": ("no placeholder",),
                    "holdout_classes": ("bag", "bag"), "train_limit": -1, "eval_limit": -2, "image_size": 8,
                    "head": "cnn", "weight_decay": float("nan"), "betas": (0.9, 0.98, 0.99), "eps": 0.0,
                    "warmup_steps": -1, "grad_clip": -1.0, "init_logit_scale": float("inf"), "max_logit_scale": 0.5,
                    "eval_every": 0, "checkpoint_every": -1, "stop_after_steps": -1, "loss": "triplet",
                    "image_tower": " ", "text_tower": "", "data": "pairs.txt", "eval_data": "fashion-mnist"}
    for key, value in out_of_range.items():
        with pytest.raises(ConfigValueError) as info:
            ClipConfig(**{key: value})
        assert info.value.key == key, (key, info.value)
    for cls, key, value in ((ProtoClipConfig, "clusters", 1), (ProtoClipConfig, "teacher_temperature", 0.0),
                            (ProtoClipConfig, "kmeans_iters", 0), (PmrlConfig, "objective", "pairwise"),
                            (PmrlConfig, "audio_variants", 10), (PmrlConfig, "inter", "x"),
                            (PmrlConfig, "tau_intra", -0.1)):
        with pytest.raises(ConfigValueError, match=f"^{key}="):
            cls(**{key: value})
    # combinations a recipe would ignore or fail on late
    with pytest.raises(ConfigValueError, match="^freeze_image=False: expected True: ProtoClipConfig trains LiT"):
        ProtoClipConfig(freeze_image=False)
    with pytest.raises(ConfigValueError, match="^holdout_classes=.*unknown: \\['boot'\\]"):
        ClipConfig(holdout_classes=("boot",))
    with pytest.raises(ConfigValueError, match="^holdout_classes=.*LiT-style"):
        ClipConfig(holdout_classes=("bag",), freeze_image=False)
    with pytest.raises(ConfigValueError, match="^init_logit_scale="):
        ClipConfig(max_logit_scale=10.0)  # ln(1/0.07) > ln 10: the clamp would change it at once
    assert ClipConfig(lr=1).lr == 1.0 and isinstance(ClipConfig(lr=1).lr, float)


def test_device_and_precision_are_checked_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigValueError, match="^device='cuda:1': expected auto or cpu: this machine has no CUDA"):
        resolve_device(ClipConfig(device="cuda:1"))
    with pytest.raises(ConfigValueError, match="^precision='fp16': expected fp32 or bf16 on cpu"):
        resolve_device(ClipConfig(device="cpu", precision="fp16"))
    assert resolve_device(ClipConfig(device="auto", precision="bf16")).type == "cpu"


@pytest.mark.parametrize("args", [["epochs=-1"], ["batch_size=0"], ["betas=0.9"], ["lrr=1"], ["epochs"],
                                  ["--config"], ["--config", "missing.yaml"]])
def test_embedhub_train_exits_2_with_the_message(args, tmp_path, capsys):
    """Bad values and usage errors exit 2 (as the command line documents) before anything is written."""
    from embedhub.cli import main

    assert main(["train", "clip", f"output={tmp_path / 'run'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embedhub train clip: error: ") and "Traceback" not in err
    assert args[-1].split("=")[0].lstrip("-") in err or "--config" in err
    assert not (tmp_path / "run").exists()  # no untrained model, no run folder


@pytest.mark.parametrize("command", [["-m", "embedhub", "train", "clip"], ["-m", "training.clip"]])
def test_recipe_commands_exit_2_without_a_traceback(command, tmp_path):
    proc = subprocess.run([sys.executable, *command, "epochs=-1", f"output={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith("override 'epochs=-1': epochs=-1: expected an integer >= 1 (passes over the "
                                        "training data)"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


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
import json, pathlib, sys, time, torch, open_clip
sys.path.insert(0, sys.argv[3])
from tests.test_training import TINY, _digits_batches
from training.config import ClipConfig
from training.loop import Trainer
from training.losses import ClipLoss
torch.manual_seed(0)
model = open_clip.CLIP(**TINY)
data = _digits_batches(40, 32, seed=0)
cfg = ClipConfig(output=sys.argv[1], epochs=3, batch_size=32, lr=5e-4, warmup_steps=5, checkpoint_every=7,
                 resume=sys.argv[2] == "resume", threads=1)
pause_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # the loss call that waits (to be killed) instead
calls = 0
def loss_fn(m, b):
    global calls
    calls += 1
    if calls == pause_at:
        pathlib.Path(sys.argv[5]).write_text(str(calls))
        time.sleep(600)
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


def _records(path: Path) -> list[dict]:
    """log.jsonl records without the wall-clock field (the only one that differs between identical runs)."""
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for r in recs:
        r.pop("epoch_seconds", None)
    return recs


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Killed (SIGKILL, still running) three steps past its checkpoint at step 49: the resumed run's log
    equals the uninterrupted run's record for record (the steps redone after the checkpoint are not
    logged twice) and it ends with the same model."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(tmp_path / "full"), "fresh", str(ROOT)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    run, marker = tmp_path / "killed", tmp_path / "paused"
    # 40 steps per epoch, a checkpoint every 7 steps: the 53rd loss call comes after step 52, checkpoint 49
    proc = subprocess.Popen([sys.executable, "-c", _RESUME_SCRIPT, str(run), "fresh", str(ROOT), "53", str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 300
        while not marker.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.is_file(), "the run never reached step 53"
        assert proc.poll() is None  # still running when killed
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 49
    killed_steps = [r["step"] for r in _records(run / "log.jsonl") if "loss" in r]
    assert killed_steps == list(range(1, 53))  # steps 50-52 were logged after the last checkpoint
    resumed = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(run), "resume", str(ROOT)],
                             capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed at step 49" in resumed.stdout
    full_log, res_log = _records(tmp_path / "full" / "log.jsonl"), _records(run / "log.jsonl")
    assert [r["step"] for r in res_log if "loss" in r] == list(range(1, 121))
    assert [sorted(r) for r in res_log] == [sorted(r) for r in full_log]
    for a, b in zip(res_log, full_log):
        for key in a:
            if key == "eval":
                assert a[key] == pytest.approx(b[key], abs=1e-6), (a, b)
            elif isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)
    assert _final(resumed.stdout)["loss0"] == pytest.approx(_final(full.stdout)["loss0"], abs=1e-6)


class _Crash(Exception):
    pass


def _linear_run(out: Path, *, crash_at: int = 0, resume: bool = False) -> dict:
    """A 3-epoch run of a linear model on real digits (5 steps an epoch, checkpoints every 7 steps); with
    ``crash_at`` the run dies in that loss call, as a killed run would, after logging the steps before it."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.from_numpy(d.data[:160]).float() / 16, torch.from_numpy(d.target[:160])
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    cfg = ClipConfig(output=str(out), epochs=3, batch_size=32, lr=1e-2, warmup_steps=2, checkpoint_every=7,
                     resume=resume, threads=1)
    calls = 0

    def loss_fn(m, b):
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise _Crash
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])

    def batches(epoch):
        order = torch.randperm(160, generator=torch.Generator().manual_seed(epoch))
        return iter([(x[order[i:i + 32]], y[order[i:i + 32]]) for i in range(0, 160, 32)])

    def evaluate(m):
        with torch.no_grad():
            return {"acc": float((m(x).argmax(1) == y).float().mean())}

    return Trainer(cfg, model, loss_fn, batches, 5, evaluate).fit()


@pytest.mark.parametrize("checkpoint", ["current", "without_log_lines"])
def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path, checkpoint):
    """Crashed in step 10 (steps 8-9 logged after the checkpoint at step 7), the resumed run's log.jsonl
    equals the uninterrupted one record for record, also from a checkpoint that lacks ``log_lines``."""
    _linear_run(tmp_path / "full")
    with pytest.raises(_Crash):
        _linear_run(tmp_path / "cut", crash_at=10)
    state = tmp_path / "cut" / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    assert (meta["step"], meta["world_size"]) == (7, 1)
    if checkpoint == "without_log_lines":
        del meta["log_lines"]
        state.write_text(json.dumps(meta))
    before = _records(tmp_path / "cut" / "log.jsonl")
    assert [r["step"] for r in before if "loss" in r] == list(range(1, 10))
    _linear_run(tmp_path / "cut", resume=True)
    full, cut = _records(tmp_path / "full" / "log.jsonl"), _records(tmp_path / "cut" / "log.jsonl")
    assert [r["step"] for r in cut if "loss" in r] == list(range(1, 16))
    assert [r["epoch"] for r in cut if "eval" in r] == [1, 2, 3]
    assert cut == full
    assert not (tmp_path / "cut" / "log.jsonl.tmp").exists()


def test_ci_fails_when_a_test_is_skipped(tmp_path):
    """.ci/run runs the README's test command with a junit report and fails, naming them, when tests were
    skipped (a missing dataset or tool skips tests; pytest alone would still exit 0)."""
    script = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q -rs --junitxml=" in script
    check = script.split("<<'PY'", 1)[1].split("\n", 1)[1].split("\nPY\n", 1)[0]  # the check's Python
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_x.py").write_text(
        "import pytest\n\ndef test_ok():\n    assert True\n\n"
        "@pytest.mark.skipif(True, reason='espeak-ng not installed')\ndef test_tool():\n    pass\n\n"
        "def test_data():\n    pytest.skip('Fashion-MNIST not installed')\n")
    for keep, expect_rc in (("", 1), ("-k test_ok", 0)):
        report = tmp_path / f"junit{expect_rc}.xml"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              f"--junitxml={report}", *keep.split(), str(suite)], cwd=suite, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stdout  # pytest itself passes with skips
        ci = subprocess.run([sys.executable, "-", str(report)], input=check, capture_output=True, text=True,
                            timeout=60)
        assert ci.returncode == expect_rc, ci.stderr
        if expect_rc:
            assert "SKIPPED test_x::test_tool: espeak-ng not installed" in ci.stderr
            assert "SKIPPED test_x::test_data: Fashion-MNIST not installed" in ci.stderr
            assert "2 test(s) skipped" in ci.stderr
        else:
            assert "no test skipped" in ci.stdout
