"""Spoken captions: espeak-ng synthesis, the numpy log-mel against explicit formulas and a sine, caption
discriminability of the frozen features across voice variants, and the AudioTower's padding invariance."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from embedhub.training import audio
from scipy.io import wavfile
from scipy.signal import get_window

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

FASHION = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
CAPTIONS = [f"a photo of a {c}." for c in FASHION]


def _cosine_stats(x: np.ndarray, owner: np.ndarray) -> tuple[float, float, float]:
    """Mean cosine of same-caption pairs (different variants), of different-caption pairs, and leave-one-out 1-NN
    accuracy (cosine) of the caption."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    same = owner[:, None] == owner[None, :]
    off = ~np.eye(len(owner), dtype=bool)
    np.fill_diagonal(sim, -np.inf)
    nn_acc = float((owner[sim.argmax(1)] == owner).mean())
    np.fill_diagonal(sim, 1.0)
    return float(sim[same & off].mean()), float(sim[~same].mean()), nn_acc


# ---------------------------------------------------------------- synthesis


@needs_espeak
def test_synthesize_writes_real_speech(tmp_path):
    path = audio.synthesize("a photo of a sneaker.", tmp_path / "sub" / "x.wav", voice="en-us", speed=170)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    sr, data = wavfile.read(path)
    assert data.dtype == np.int16 and data.ndim == 1
    wave, sr2 = audio.read_wav(path)
    assert sr2 == sr and wave.dtype == np.float32 and np.abs(wave).max() <= 1.0
    assert 0.3 < len(wave) / sr < 5.0
    assert np.abs(wave).max() > 0.05 and np.sqrt(np.mean(wave**2)) > 0.01
    # slower speech is longer
    slow, _ = audio.read_wav(audio.synthesize("a photo of a sneaker.", tmp_path / "slow.wav", voice="en-us", speed=100))
    assert len(slow) > 1.3 * len(wave)


@needs_espeak
def test_synthesize_text_is_an_argument_not_options_or_shell(tmp_path):
    for i, text in enumerate(["--help", "-v xx; touch pwned", "$(touch pwned) `touch pwned`"]):
        wave, sr = audio.read_wav(audio.synthesize(text, tmp_path / f"{i}.wav"))
        assert len(wave) / sr > 0.3
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@needs_espeak
def test_synthesize_bad_voice_raises(tmp_path):
    with pytest.raises(RuntimeError, match="espeak-ng failed"):
        audio.synthesize("hello", tmp_path / "x.wav", voice="zz-nonexistent")  # ("no-..." would be Norwegian)
    assert not list(tmp_path.iterdir())


def test_missing_espeak_names_the_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        audio.synthesize("hello", tmp_path / "x.wav")


@needs_espeak
def test_variants_are_deterministic_and_available():
    chosen = audio.caption_variants(6)
    assert chosen == audio.caption_variants(6) and len(set(chosen)) == 6
    assert {v.voice for v in chosen} <= set(audio.available_voices())
    assert [v.speed for v in chosen[:3]] == [140, 170, 200]
    assert len({v.voice for v in chosen[:3]}) == 3


# ---------------------------------------------------------------- log-mel


def test_mel_scale_and_filterbank():
    assert audio.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # HTK: 1000 Hz ~ 1000 mel
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel([0.0, 440.0, 8000.0])), [0.0, 440.0, 8000.0])
    fb = audio.mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    assert (fb.max(axis=1) > 0.5).all()  # no empty filter
    assert np.all(np.diff(audio.mel_centres(16000, 40)) > 0)


def test_log_mel_matches_explicit_frame():
    rng = np.random.default_rng(0)
    sr = 16000
    wave = rng.uniform(-0.5, 0.5, sr).astype(np.float32)
    mel = audio.log_mel(wave, sr, n_mels=40)
    assert mel.dtype == np.float32 and mel.shape == (1 + int(np.ceil((sr - 400) / 160)), 40)  # 99 frames
    # frame 7 by hand: 400-sample periodic Hann window, 512-point power spectrum, filterbank, log(x + 1e-6)
    frame = wave[7 * 160: 7 * 160 + 400].astype(np.float64) * get_window("hann", 400)
    power = np.abs(np.fft.rfft(frame, 512)) ** 2
    np.testing.assert_allclose(mel[7], np.log(audio.mel_filterbank(sr, 512, 40) @ power + 1e-6), rtol=1e-5)
    # int16 input is scaled to [-1, 1]; short input still gives one frame
    pcm = np.round(wave * 32768).astype(np.int16)
    np.testing.assert_allclose(audio.log_mel(pcm, sr), mel, atol=1e-3)
    assert audio.log_mel(wave[:100], sr).shape == (1, 40)


@pytest.mark.parametrize("sr", [16000, 22050])
def test_log_mel_sine_peaks_in_its_mel_bin(sr):
    t = np.arange(sr) / sr
    mel = audio.log_mel(0.5 * np.sin(2 * np.pi * 1000.0 * t), sr, n_mels=40)
    peak = int(mel.mean(axis=0).argmax())
    edges = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(sr / 2), 42))
    containing = [k for k in range(40) if edges[k] < 1000.0 < edges[k + 2]]  # the two triangles covering 1 kHz
    nearest = int(np.abs(audio.hz_to_mel(audio.mel_centres(sr, 40)) - audio.hz_to_mel(1000.0)).argmin())
    assert peak in containing and peak == nearest


# ---------------------------------------------------------------- spoken caption features


@pytest.fixture(scope="module")
def caption_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spoken")


@needs_espeak
def test_spoken_caption_features_discriminate_captions_across_variants(caption_cache, monkeypatch):
    feats, owner = audio.spoken_caption_features(CAPTIONS, caption_cache, variants=3)
    assert feats.shape == (30, 120) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert owner == [i for i in range(10) for _ in range(3)]
    owner_a = np.asarray(owner)
    raw, owner_raw = audio.spoken_caption_features(CAPTIONS, caption_cache, variants=3, normalize=None)
    assert owner_raw == owner

    s_raw, d_raw, nn_raw = _cosine_stats(raw, owner_a)
    z = (raw - raw.mean(0)) / raw.std(0)
    s_z, d_z, nn_z = _cosine_stats(z, owner_a)
    s_v, d_v, nn_v = _cosine_stats(feats, owner_a)
    print(f"\nraw:               same-caption cos {s_raw:.4f}  different {d_raw:.4f}  1-NN acc {nn_raw:.3f}"
          f"\nraw, z-scored:     same-caption cos {s_z:.4f}  different {d_z:.4f}  1-NN acc {nn_z:.3f}"
          f"\nvariant-normalised: same-caption cos {s_v:.4f}  different {d_v:.4f}  1-NN acc {nn_v:.3f}")
    # Raw features: variants of one caption are closer on average, but voice dominates the nearest neighbour.
    assert s_raw > d_raw and s_z > d_z + 0.1
    # Per-variant (speaker) normalisation: the caption is recoverable (measured 0.97-1.0; chance 0.1).
    assert s_v > d_v + 0.5
    assert nn_v > 0.5

    # cached: a second call synthesises nothing
    monkeypatch.setattr(audio, "synthesize", lambda *a, **k: pytest.fail("re-synthesised a cached WAV"))
    again, _ = audio.spoken_caption_features(CAPTIONS, caption_cache, variants=3)
    np.testing.assert_array_equal(again, feats)
    mels, owner_m = audio.spoken_caption_logmels(CAPTIONS[:2], caption_cache, variants=3)
    assert owner_m == [0, 0, 0, 1, 1, 1] and all(m.ndim == 2 and m.shape[1] == 40 for m in mels)
    assert len({m.shape[0] for m in mels}) > 1  # speeds differ -> lengths differ


def test_normalize_per_variant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)) + np.repeat([[10.0], [-5.0]], 3, axis=0)
    y = audio.normalize_per_variant(x, [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(y[:3].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        audio.normalize_per_variant(x[:4], [0, 0, 0, 1])


# ---------------------------------------------------------------- AudioTower


def test_audio_tower_shape_determinism_and_masking():
    torch.manual_seed(0)
    tower = audio.AudioTower(n_mels=40).eval()
    torch.manual_seed(0)
    twin = audio.AudioTower(n_mels=40).eval()
    for a, b in zip(tower.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)
    rng = np.random.default_rng(0)
    mels = [rng.normal(-5, 3, size=(n, 40)).astype(np.float32) for n in (37, 120, 1, 64)]
    tower.fit_input_norm(mels)
    x, lengths = audio.pad_logmels(mels)
    assert x.shape == (4, 120, 40) and lengths.tolist() == [37, 120, 1, 64]
    with torch.no_grad():
        out = tower(x, lengths)
        assert out.shape == (4, 256) and tower.out_dim == 256 and torch.isfinite(out).all()
        # each utterance alone (no padding) gives the same vector as in the padded batch
        for i, m in enumerate(mels):
            alone = tower(torch.from_numpy(m)[None])
            torch.testing.assert_close(alone[0], out[i], atol=1e-5, rtol=1e-5)
        # whatever the padding holds, the output does not change
        garbage = x.clone()
        for i, n in enumerate(lengths.tolist()):
            garbage[i, n:] = torch.randn(120 - n, 40) * 100
        torch.testing.assert_close(tower(garbage, lengths), out, atol=1e-5, rtol=1e-5)
        # and the outputs differ between utterances
        assert (out[0] - out[3]).abs().max() > 1e-3
    with pytest.raises(ValueError):
        tower(x, torch.tensor([0, 5, 5, 5]))
    # trainable: gradients reach both convolutions
    tower.train()
    tower(x, lengths).pow(2).mean().backward()
    assert tower.conv1.weight.grad is not None and tower.conv1.weight.grad.abs().sum() > 0
