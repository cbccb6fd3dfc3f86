"""Spoken captions: a third, real modality for multimodal alignment (PMRL) beside images and text.

Captions are spoken by Debian's ``espeak-ng`` (``apt-get install espeak-ng``), a formant synthesiser, in a few
deterministic voice / speed / pitch variants; the WAVs are cached. Audio is turned into log-mel spectrograms in
numpy/scipy only (no torchaudio, no librosa), and from there either into a fixed-size frozen feature per utterance
(for a linear head) or into an :class:`AudioTower`, a small trainable 1-D conv encoder with masked pooling.

API::

    synthesize(text, path, *, voice="en", speed=160, pitch=50) -> Path          # a 16-bit mono WAV
    available_voices() -> tuple[str, ...]                                      # espeak-ng English voices
    caption_variants(variants) -> list[Variant]                                # deterministic (voice, speed, pitch)
    read_wav(path) -> (float32 wave in [-1, 1], sample rate)
    log_mel(wave, sr, n_mels=40) -> (frames, n_mels) float32                   # 25 ms Hann, 10 ms hop, HTK mel
    mel_filterbank(sr, n_fft, n_mels) -> (n_mels, n_fft // 2 + 1)
    utterance_feature(logmel) -> (3 * n_mels,)                                 # mean, std, mean |delta|
    spoken_caption_features(captions, cache_dir, *, variants=3, normalize="variant")
        -> ((U, 3 * n_mels) float32, caption index per U)                     # U = len(captions) * variants
    normalize_per_variant(feats, variant_ids) -> feats centred per voice variant, unit std per dimension
    spoken_caption_wavs(captions, cache_dir, *, variants=3) -> (cached WAV paths, caption index per U)
    spoken_caption_logmels(captions, cache_dir, *, variants=3) -> (list of (frames, n_mels), caption index per U)
    pad_logmels(logmels) -> ((B, T, n_mels) tensor, (B,) lengths)
    AudioTower(n_mels=40)(x, lengths) -> (B, 256)                              # masked mean + std pooling
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile
from torch import nn

from embedhub.store import atomic_write

ESPEAK = "espeak-ng"
APT_HINT = "espeak-ng is not installed (not on PATH): install the Debian package with `apt-get install espeak-ng`"
# English voices of espeak-ng's own (non-MBROLA) voice set, in order of preference for the variants; only those the
# installed espeak-ng lists are used. ("en" is an alias of "en-gb", so it is not a distinct variant voice.)
VARIANT_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp")
VARIANT_SPEEDS = (140, 170, 200)  # words per minute
VARIANT_PITCHES = (50, 35, 65)  # espeak-ng pitch 0-99
WIN_S, HOP_S = 0.025, 0.010
LOG_EPS = 1e-6


def _espeak() -> str:
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise RuntimeError(APT_HINT)
    return exe


def synthesize(text: str, path: Path, *, voice: str = "en", speed: int = 160, pitch: int = 50) -> Path:
    """Speak ``text`` with espeak-ng into the WAV file ``path`` (16-bit mono, 22050 Hz) and return the path.

    The text goes to espeak-ng as one argument (no shell), after ``--`` so a leading ``-`` is not an option. The WAV
    is written next to ``path`` and renamed into place, so an interrupted run leaves no partial file behind.
    """
    exe = _espeak()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def speak(tmp: str) -> None:
        cmd = [exe, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", tmp, "--", text]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not Path(tmp).is_file() or Path(tmp).stat().st_size <= 44:
            raise RuntimeError(f"espeak-ng failed (exit {proc.returncode}) for voice {voice!r}, text {text!r}: "
                               f"{(proc.stderr or proc.stdout).strip()}")

    return atomic_write(path, speak)


@lru_cache(maxsize=1)
def available_voices() -> tuple[str, ...]:
    """Language names of the English voices the installed espeak-ng has, MBROLA voices excluded."""
    proc = subprocess.run([_espeak(), "--voices=en"], capture_output=True, text=True, timeout=30, check=True)
    names = []
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        # Pty Language Age/Gender VoiceName File [Other languages]; MBROLA voices live under mb/ and need mbrola.
        if len(cols) >= 5 and not cols[4].startswith("mb/") and cols[1] not in names:
            names.append(cols[1])
    return tuple(names)


@dataclass(frozen=True)
class Variant:
    voice: str
    speed: int
    pitch: int


def caption_variants(variants: int) -> list[Variant]:
    """``variants`` deterministic (voice, speed, pitch) choices: voices cycle through the available ones of
    :data:`VARIANT_VOICES`, speeds through :data:`VARIANT_SPEEDS`, pitches change once per round of speeds."""
    have = set(available_voices())
    voices = [v for v in VARIANT_VOICES if v in have] or ["en"]
    ns = len(VARIANT_SPEEDS)
    return [Variant(voices[k % len(voices)], VARIANT_SPEEDS[k % ns], VARIANT_PITCHES[(k // ns) % len(VARIANT_PITCHES)])
            for k in range(variants)]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A WAV file as a float32 mono wave in [-1, 1] and its sample rate (integer PCM scaled by its full range)."""
    sr, data = wavfile.read(str(path))
    return _to_float(data), int(sr)


def _to_float(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype == np.uint8:
        wave = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        wave = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        wave = data.astype(np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular filters (n_mels, n_fft // 2 + 1), peak 1, centres equally spaced on the HTK mel scale between
    ``fmin`` and ``fmax`` (default sr / 2); the triangles are evaluated at the FFT bin frequencies."""
    fmax = sr / 2.0 if fmax is None else fmax
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lo) / (centre - lo)
    falling = (hi - freqs[None, :]) / (hi - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_centres(sr: int, n_mels: int = 40, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Centre frequencies (Hz) of the :func:`mel_filterbank` filters."""
    fmax = sr / 2.0 if fmax is None else fmax
    return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))[1:-1]


def frame_params(sr: int) -> tuple[int, int, int]:
    """(window, hop, n_fft) in samples: 25 ms, 10 ms, the next power of two >= the window."""
    win = int(round(WIN_S * sr))
    hop = int(round(HOP_S * sr))
    return win, hop, 1 << (win - 1).bit_length()


def log_mel(wave: np.ndarray, sr: int, n_mels: int = 40) -> np.ndarray:
    """Log-mel spectrogram (frames, n_mels) float32: 25 ms periodic Hann frames every 10 ms (the last partial frame
    zero-padded; at least one frame), power spectrum |rfft|^2, HTK triangular mel filterbank, log(x + 1e-6).

    ``wave`` is a mono float wave in [-1, 1] (integer PCM is scaled to it; 2-D input is averaged over channels).
    """
    wave = _to_float(wave).astype(np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono wave, got shape {wave.shape}")
    win, hop, n_fft = frame_params(sr)
    n_frames = 1 + max(0, -(-(len(wave) - win) // hop))
    padded = np.zeros((n_frames - 1) * hop + win)
    padded[: len(wave)] = wave
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2
    mel = power @ mel_filterbank(sr, n_fft, n_mels).T
    return np.log(mel + LOG_EPS).astype(np.float32)


def utterance_feature(logmel: np.ndarray) -> np.ndarray:
    """Frozen fixed-size feature of one utterance (3 * n_mels,): mean and std over time of the log-mel, and the
    mean over time of the absolute first-order deltas (frame-to-frame differences; zeros for a single frame).

    The mean of the *signed* deltas telescopes to (last - first) / (T - 1), ~0 for speech with silence at both
    ends, so the magnitude is used: how fast each mel band changes, a speaking-rate-sensitive spectral-flux term.
    """
    logmel = np.asarray(logmel, dtype=np.float64)
    delta = np.abs(np.diff(logmel, axis=0)).mean(axis=0) if len(logmel) > 1 else np.zeros(logmel.shape[1])
    return np.concatenate([logmel.mean(axis=0), logmel.std(axis=0), delta]).astype(np.float32)


def _cache_path(cache_dir: Path, text: str, v: Variant) -> Path:
    key = hashlib.sha1(f"{v.voice}\0{v.speed}\0{v.pitch}\0{text}".encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{v.voice}-s{v.speed}-p{v.pitch}-{key}.wav"


def spoken_caption_wavs(captions: list[str], cache_dir: Path, *, variants: int = 3) -> tuple[list[Path], list[int]]:
    """Synthesise every caption in ``variants`` :func:`caption_variants` (cached in ``cache_dir``: an existing WAV
    is not synthesised again); returns the WAV paths, caption-major, and the caption index of each."""
    if variants < 1:
        raise ValueError("variants must be >= 1")
    paths, owner = [], []
    chosen = caption_variants(variants)
    for i, text in enumerate(captions):
        for v in chosen:
            path = _cache_path(cache_dir, text, v)
            if not path.is_file():
                synthesize(text, path, voice=v.voice, speed=v.speed, pitch=v.pitch)
            paths.append(path)
            owner.append(i)
    return paths, owner


def spoken_caption_logmels(captions: list[str], cache_dir: Path, *, variants: int = 3,
                           n_mels: int = 40) -> tuple[list[np.ndarray], list[int]]:
    """Per-utterance log-mel spectrograms (frames, n_mels) of the spoken captions (for :class:`AudioTower`), and the
    caption index of each utterance; utterances are caption-major (caption 0's variants first)."""
    paths, owner = spoken_caption_wavs(captions, cache_dir, variants=variants)
    mels = []
    for path in paths:
        wave, sr = read_wav(path)
        mels.append(log_mel(wave, sr, n_mels))
    return mels, owner


def normalize_per_variant(feats: np.ndarray, variant_ids: np.ndarray | list[int]) -> np.ndarray:
    """Speaker (variant) normalisation: subtract from each utterance's feature the mean feature of its variant's
    utterances, then scale every dimension to unit std over all utterances. Each variant needs >= 2 utterances.

    Voice, speed and pitch shift the frame statistics far more than the one word that tells two captions apart, so on
    raw features the nearest neighbour of an utterance is another caption in the same voice; centring per variant
    removes those offsets, as per-speaker mean normalisation does in speech recognition.
    """
    x = np.asarray(feats, dtype=np.float64).copy()
    ids = np.asarray(variant_ids)
    for v in np.unique(ids):
        sel = ids == v
        if sel.sum() < 2:
            raise ValueError("per-variant normalisation needs at least 2 utterances (captions) per variant")
        x[sel] -= x[sel].mean(axis=0)
    return (x / (x.std(axis=0) + 1e-8)).astype(np.float32)


def spoken_caption_features(captions: list[str], cache_dir: Path, *, variants: int = 3, n_mels: int = 40,
                            normalize: str | None = "variant") -> tuple[np.ndarray, list[int]]:
    """Frozen features (U, 3 * n_mels) float32 of the spoken captions, U = len(captions) * variants, caption-major
    (caption 0's variants first), and the caption index of each utterance.

    Each feature is :func:`utterance_feature` of the utterance's log-mel; with ``normalize="variant"`` (default)
    they then go through :func:`normalize_per_variant` over this call's captions (so it needs >= 2 captions, and a
    feature depends on the caption set: pass the recipe's full, fixed caption set); ``normalize=None`` gives the raw
    features.
    """
    if normalize not in ("variant", None):
        raise ValueError(f"normalize must be 'variant' or None, got {normalize!r}")
    mels, owner = spoken_caption_logmels(captions, cache_dir, variants=variants, n_mels=n_mels)
    feats = np.stack([utterance_feature(m) for m in mels]) if mels else np.zeros((0, 3 * n_mels), np.float32)
    if normalize == "variant":
        feats = normalize_per_variant(feats, np.arange(len(feats)) % variants)
    return feats, owner


def pad_logmels(logmels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length log-mels into a zero-padded (B, T_max, n_mels) float32 tensor and (B,) lengths."""
    lengths = torch.tensor([len(m) for m in logmels], dtype=torch.long)
    out = torch.zeros(len(logmels), int(lengths.max()) if len(logmels) else 0, logmels[0].shape[1] if logmels else 0)
    for i, m in enumerate(logmels):
        out[i, : len(m)] = torch.as_tensor(np.asarray(m, dtype=np.float32))
    return out, lengths


class AudioTower(nn.Module):
    """Small audio encoder for log-mel inputs (B, T, n_mels) -> (B, 2 * channels[1]) (256 by default).

    Per-bin input standardisation (fixed buffers, identity until :meth:`fit_input_norm`), Conv1d(n_mels -> 64, k5),
    GELU, Conv1d(64 -> 128, k5, stride 2), GELU, then mean and std over the valid time steps. Frames at or past an
    utterance's length are zeroed before each convolution, so they act exactly like the convolution's own zero
    padding: the output of an utterance does not depend on how much padding follows it in the batch.
    """

    def __init__(self, n_mels: int = 40, channels: tuple[int, int] = (64, 128), kernel_size: int = 5,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        pad = kernel_size // 2
        self.n_mels = n_mels
        self.eps = eps
        self.conv1 = nn.Conv1d(n_mels, channels[0], kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels[0], channels[1], kernel_size, stride=2, padding=pad)
        self.act = nn.GELU()
        self.register_buffer("input_mean", torch.zeros(n_mels))
        self.register_buffer("input_std", torch.ones(n_mels))
        self.out_dim = 2 * channels[1]

    @torch.no_grad()
    def fit_input_norm(self, logmels: list[np.ndarray]) -> None:
        """Set the input standardisation to the per-bin mean and std over all frames of ``logmels``."""
        frames = torch.as_tensor(np.concatenate([np.asarray(m, dtype=np.float32) for m in logmels]))
        self.input_mean.copy_(frames.mean(0))
        self.input_std.copy_(frames.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, n_mels) log-mels, ``lengths`` (B,) valid frames (>= 1; default all T) -> (B, out_dim)."""
        b, t, _ = x.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=x.device)
        lengths = lengths.to(x.device)
        if bool((lengths < 1).any()) or bool((lengths > t).any()):
            raise ValueError("lengths must be in [1, T]")
        mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
        h = ((x - self.input_mean) / self.input_std).transpose(1, 2) * mask[:, None, :]  # (B, n_mels, T)
        h = self.act(self.conv1(h)) * mask[:, None, :]
        h = self.act(self.conv2(h))  # (B, C, T2)
        out_len = (lengths - 1) // self.conv2.stride[0] + 1  # = the conv output length of an unpadded input
        m2 = (torch.arange(h.shape[-1], device=x.device)[None, :] < out_len[:, None]).to(h.dtype)[:, None, :]
        n = m2.sum(-1)
        mean = (h * m2).sum(-1) / n
        var = (((h - mean[..., None]) ** 2) * m2).sum(-1) / n
        return torch.cat([mean, torch.sqrt(var + self.eps)], dim=-1)
