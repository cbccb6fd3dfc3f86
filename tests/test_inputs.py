"""Inputs, encode arguments and memory (issue 9 items 4, 5, 9, 10, 13 and 17): every bad input or
argument is a typed error naming it, high-bit-depth images give the right numbers, and text
encoding holds only a bounded window of tokens besides its one output array."""

from __future__ import annotations

import io
import os
import signal
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import embedhub
import embedhub.modules.batching as batching
import embedhub.modules.inputs as inputs_mod


@pytest.fixture(scope="module")
def clip(open_clip_dir):
    return embedhub.load(open_clip_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_text(tiny_st_dir):
    return embedhub.load(tiny_st_dir, device="cpu")


@pytest.fixture
def no_hang():
    """Fail (instead of hanging forever) when a read blocks: SIGALRM after 30 s."""

    def alarm(signum, frame):
        raise TimeoutError("encode blocked for 30 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _png(size=(40, 30), color=(120, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _gray_photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut) as float grayscale in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    rgb = data.astronaut().astype(np.float64) / 255.0
    return rgb @ np.array([0.2125, 0.7154, 0.0721])


# ---------------------------------------------------------------- item 4: only regular files are read
def test_dev_zero_fifo_and_directory_are_refused_without_reading(image_only, tmp_path, no_hang):
    assert os.path.getsize("/dev/zero") == 0  # the old size guard saw 0 bytes and read forever
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: image path /dev/zero is a character device"):
        image_only.encode([_png(), Path("/dev/zero")])

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # no writer: a blocking open would hang here forever
    with pytest.raises(embedhub.InputError, match=rf"inputs\[0\]: image path {fifo} is a FIFO"):
        image_only.encode([fifo])

    with pytest.raises(embedhub.InputError, match=rf"inputs\[2\]: image path {tmp_path} is a directory"):
        image_only.encode([_png(), _png(), tmp_path])


def test_size_bound_is_enforced_while_reading(image_only, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs_mod, "MAX_IMAGE_BYTES", 200)
    # a regular file whose size is unknown until read (st_size 0): the bound holds for what is read
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0 and len(status.read_bytes()) > 200
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: image file /proc/self/status holds more than 200"):
        image_only.encode([status])
    big = tmp_path / "big.png"
    big.write_bytes(_png((300, 300), (1, 2, 3)) + b"\0" * 300)
    with pytest.raises(embedhub.InputError, match=rf"inputs\[1\]: image file {big} is \d+ bytes, over the 200"):
        image_only.encode([_png(), big])
    small = tmp_path / "small.png"
    small.write_bytes(_png((2, 2)))
    assert small.stat().st_size <= 200
    assert image_only.encode(small).shape == (16,)


def test_regular_image_file_still_embeds_like_its_bytes(image_only, tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(_png())
    np.testing.assert_allclose(image_only.encode(f), image_only.encode(_png()), atol=1e-6)


# ---------------------------------------------------------------- item 5: one validation of batch_size / max_tokens
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": -1}, ValueError, "batch_size must be >= 1, got -1"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, r"batch_size must be an int >= 1, got 2\.5 \(float\)"),
        ({"batch_size": None}, TypeError, r"batch_size must be an int >= 1, got None \(NoneType\)"),
        ({"batch_size": True}, TypeError, r"batch_size must be an int >= 1, got True \(bool\)"),
        ({"batch_size": "8"}, TypeError, r"batch_size must be an int >= 1, got '8' \(str\)"),
        ({"max_tokens": 0}, ValueError, "max_tokens must be >= 1, got 0"),
        ({"max_tokens": -1}, ValueError, "max_tokens must be >= 1, got -1"),
        ({"max_tokens": 2.5}, TypeError, r"max_tokens must be an int >= 1 or None, got 2\.5"),
        ({"max_tokens": False}, TypeError, r"max_tokens must be an int >= 1 or None, got False \(bool\)"),
        ({"max_image_pixels": 0}, ValueError, "max_image_pixels must be >= 1, got 0"),
    ],
)
def test_batch_arguments_are_checked_for_every_modality(clip, photos, kwargs, error, message):
    for inputs in (["a cat", "a dog"], photos[:2], ["a cat", photos[0]]):
        with pytest.raises(error, match=message):
            clip.encode(inputs, **kwargs)
    # checked before any input is read: the missing file is never reached
    with pytest.raises(error, match=message):
        clip.encode([Path("/no/such/image.png")], **kwargs)


def test_negative_batch_size_on_images_no_longer_returns_garbage(image_only, photos):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -1"):
        image_only.encode(photos, batch_size=-1)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -1"):
        image_only.encode_image(photos, batch_size=-1)


def test_batch_arguments_checked_in_zero_shot_and_numpy_ints_accepted(clip, photos):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -1"):
        clip.zero_shot(photos, ["cat", "dog"], batch_size=-1)
    with pytest.raises(TypeError, match=r"batch_size must be an int >= 1, got 2\.5"):
        clip.zero_shot(photos, ["cat", "dog"], batch_size=2.5)
    ref = clip.encode(photos + ["a cat"], batch_size=2)
    np.testing.assert_allclose(clip.encode(photos + ["a cat"], batch_size=np.int64(2), max_tokens=np.int32(500)),
                               ref, atol=1e-6)


# ---------------------------------------------------------------- item 9: high bit depth
def _embed_png16_vs_png8(model) -> tuple[float, float, int]:
    """Cosines of a 16-bit PNG of a real photo against the same photo in 8 bits: as embedhub reads it,
    and as a plain ``convert("RGB")`` reads it (the old, clipping path)."""
    gray = _gray_photo()
    g16, g8 = np.rint(gray * 65535).astype(np.uint16), np.rint(gray * 255).astype(np.uint8)
    b16, b8 = io.BytesIO(), io.BytesIO()
    Image.fromarray(g16).save(b16, format="PNG")
    Image.fromarray(g8).save(b8, format="PNG")
    assert Image.open(io.BytesIO(b16.getvalue())).mode == "I;16"  # a real 16-bit PNG
    clipped = np.asarray(Image.open(io.BytesIO(b16.getvalue())).convert("RGB"))
    ours, ref, old = model.encode([b16.getvalue(), b8.getvalue(), clipped])
    return _cos(ours, ref), _cos(old, ref), int(np.asarray(Image.open(io.BytesIO(b16.getvalue()))).max())


@pytest.mark.parametrize("model_name", ["clip", "image_only"])
def test_16_bit_png_embeds_like_8_bit(request, model_name):
    model = request.getfixturevalue(model_name)
    cos16, cos_clipped, top = _embed_png16_vs_png8(model)
    assert top > 255  # real 16-bit values in the file
    assert cos16 > 0.999, cos16
    assert cos_clipped < cos16 - 0.001 and cos_clipped < 0.999, cos_clipped  # the test tells the two apart


def test_16_bit_pixels_are_scaled_not_clipped(tmp_path):
    from embedhub.modules.inputs import load_image

    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "ramp.png"
    Image.fromarray(values).save(path)
    rgb = np.asarray(load_image(path, 0))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 1, 128, 255])  # round(v * 255 / 65535)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    img_i = Image.fromarray(values.astype(np.int32))  # mode I, as older Pillows read 16-bit PNGs
    assert img_i.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(img_i, 0))[0, :, 1], [0, 0, 1, 1, 128, 255])
    with pytest.raises(embedhub.InputError, match=r"inputs\[3\]: 32-bit integer image \(mode I\) holds values "
                                                  r"-5\.\.70000; expected 16-bit data in 0\.\.65535"):
        load_image(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)), 3)


def test_float_tiff_embeds_like_8_bit(clip, image_only, tmp_path):
    gray = _gray_photo().astype(np.float32)
    tif, png = tmp_path / "photo.tif", tmp_path / "photo.png"
    Image.fromarray(gray).save(tif)
    Image.fromarray(np.rint(gray * 255).astype(np.uint8)).save(png)
    assert Image.open(tif).mode == "F"
    for model in (clip, image_only):
        ours, ref = model.encode([tif, png])
        assert _cos(ours, ref) > 0.999


def test_float_tiff_out_of_range_or_nan_is_refused(image_only, tmp_path):
    gray = _gray_photo().astype(np.float32)
    scaled, nan = tmp_path / "0-255.tif", tmp_path / "nan.tif"
    Image.fromarray(gray * 255).save(scaled)  # float data in 0..255, not [0, 1]
    with_nan = gray.copy()
    with_nan[10, 10] = np.nan
    Image.fromarray(with_nan).save(nan)
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: float image \(mode F\) holds values 0\..*; "
                                                  r"expected data in \[0, 1\]"):
        image_only.encode([_png(), scaled])
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: float image \(mode F\) holds NaN"):
        image_only.encode([nan])


# ---------------------------------------------------------------- item 10: zero_shot labels and templates
def test_zero_shot_refuses_a_string_for_labels_or_templates(clip, photos):
    with pytest.raises(ValueError, match=r"labels is a str \('cat'\); pass a list, e.g. \['cat'\]"):
        clip.zero_shot(photos[0], "cat")
    with pytest.raises(ValueError, match=r"templates is a str \('a photo of a \{\}.'\); pass a list"):
        clip.zero_shot(photos[0], ["cat", "dog"], "a photo of a {}.")
    with pytest.raises(ValueError, match=r"labels must be a list of strings.*got a set"):
        clip.zero_shot(photos[0], {"cat", "dog"})
    with pytest.raises(ValueError, match=r"labels\[1\] = ''"):
        clip.zero_shot(photos[0], ["cat", ""])
    with pytest.raises(ValueError, match="templates must be a non-empty list.*got an empty list"):
        clip.zero_shot(photos[0], ["cat", "dog"], [])


@pytest.mark.parametrize(
    "template, found",
    [
        ("{} {x}", r"found \{\}, \{x\}"),
        ("{0}", r"found \{0\}"),
        ("{}{}", r"found \{\}, \{\}"),
        ("a photo", "found no replacement field"),
        ("{!r}", r"found \{!r\}"),
        ("{:>10}", r"found \{:>10\}"),
        ("{.__class__}", r"found \{.__class__\}"),
        ("a {} of {", "not a valid format string"),
        ("a } of {}", "not a valid format string"),
    ],
)
def test_zero_shot_bad_templates_are_value_errors_naming_them(clip, photos, template, found):
    with pytest.raises(ValueError, match=r"template .* must contain exactly one '\{\}'|not a valid format") as err:
        clip.zero_shot(photos[0], ["cat", "dog"], ["a photo of a {}.", template])
    # embedhub's own ValueError for a bad argument, not a KeyError / IndexError / AttributeError of str.format
    assert type(err.value) is embedhub.ArgumentError
    assert repr(template) in str(err.value)
    assert err.match(found)


def test_zero_shot_good_templates_still_work(clip, photos):
    probs = clip.zero_shot(photos, ["cat", "dog"], ["a {{literal}} photo of a {}.", "{}"])
    assert probs.shape == (len(photos), 2)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    ref = clip.zero_shot(photos, ("cat", "dog"), ("a {{literal}} photo of a {}.", "{}"))
    np.testing.assert_allclose(probs, ref, atol=1e-6)


# ---------------------------------------------------------------- item 13: inputs
@pytest.mark.parametrize("text", ["\ud800", "ok \udcff then", "tail \udfff"])
def test_lone_surrogate_is_an_input_error_naming_the_index(minilm, clip, text):
    for model in (minilm, clip):  # tokenizers (HF) and open_clip's own tokenizer
        with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: text is not valid Unicode.*UTF-8") as err:
            model.encode(["fine", text, "also fine"])
        assert not isinstance(err.value, TypeError)
    bad = b"caf\xe9".decode("utf-8", errors="surrogateescape")  # how invalid UTF-8 argv reaches Python
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: text is not valid Unicode: '\\udce9' at character 3"):
        minilm.encode(bad)
    assert minilm.encode(["café ☕ 😀"]).shape == (1, 384)


def test_truncated_jpeg_as_open_pil_image(image_only, photos):
    buf = io.BytesIO()
    photos[0].save(buf, format="JPEG")
    lazy = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # opens fine, fails at load()
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: PIL image of mode RGB cannot be read.*truncated"):
        image_only.encode([photos[1], lazy])
    whole = Image.open(io.BytesIO(buf.getvalue()))
    assert image_only.encode([whole]).shape == (1, 16)


def test_closed_pil_image(image_only, photos):
    img = photos[2].copy()
    img.close()
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: PIL image of mode RGB cannot be read \(closed"):
        image_only.encode([img, photos[0]])


def test_sets_and_dicts_are_refused_sequences_and_iterators_accepted(minilm):
    texts = ["a cat", "a dog", "a bird"]
    for bad in (set(texts), frozenset(texts)):
        with pytest.raises(embedhub.InputTypeError, match=rf"inputs is a {type(bad).__name__}, which has no "
                                                          "defined order"):
            minilm.encode(bad)
    d = dict.fromkeys(texts)
    for bad in (d, d.keys(), d.values(), d.items()):
        with pytest.raises(embedhub.InputTypeError, match=rf"inputs is a {type(bad).__name__}; pass a list"):
            minilm.encode(bad)
    ref = minilm.encode(texts)
    np.testing.assert_allclose(minilm.encode(t for t in texts), ref, atol=1e-6)  # a generator
    np.testing.assert_allclose(minilm.encode(iter(texts)), ref, atol=1e-6)
    np.testing.assert_allclose(minilm.encode(tuple(texts)), ref, atol=1e-6)
    np.testing.assert_allclose(minilm.encode_text(t for t in texts), ref, atol=1e-6)  # consumed once only
    with pytest.raises(embedhub.InputTypeError, match=r"inputs\[1\] is a frozenset; nested inputs"):
        minilm.encode(["a", frozenset("b")])


def test_max_image_pixels_above_pillows_own_limit(image_only, monkeypatch):
    # Pillow refuses images above twice its global MAX_IMAGE_PIXELS; scaled down here (Pillow's
    # default is 89 Mpixel: a real 180 Mpixel image would need gigabytes) by lowering that global,
    # as an application may do. A max_image_pixels above it must really raise the limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    png = _png((60, 40))  # 2400 pixels > 2 x 500
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))
    assert image_only.encode(png, max_image_pixels=3000).shape == (16,)
    assert Image.MAX_IMAGE_PIXELS == 500  # Pillow's own setting is restored
    # the default and a smaller limit still refuse, with embedhub's message
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: image of 60x40 = 2400 pixels exceeds the limit "
                                                  "of 2000 pixels"):
        image_only.encode([png], max_image_pixels=2000)
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: image refused as a decompression bomb"):
        image_only.encode([png], max_image_pixels=1000)  # above twice the limit: Pillow's guard refuses
    assert Image.MAX_IMAGE_PIXELS == 500


def _bilevel_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of zeros, compressed row by row (never held whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_default_pixel_limit_still_refuses_bombs(image_only, tmp_path):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bilevel_png(12000, 12000))  # 144 Mpixel in a few kB: above twice the default limit
    assert bomb.stat().st_size < 100_000
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's own default would only warn, then decode it
        assert Image.open(bomb).size == (12000, 12000)
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: image refused as a decompression bomb"):
        image_only.encode([bomb])
    mid = tmp_path / "mid.png"
    mid.write_bytes(_bilevel_png(9000, 9000))  # 81 Mpixel: between the default limit and twice it
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: image of 9000x9000 = 81000000 pixels exceeds"):
        image_only.encode([_png(), mid])
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's own setting, untouched


# ---------------------------------------------------------------- item 17: memory
def test_texts_are_tokenised_per_window_with_the_same_results(tiny_text, sts_test, monkeypatch):
    texts = sts_test[0][:300] + sts_test[1][:300]
    full = tiny_text.encode(texts, batch_size=16)  # 600 texts: one window (global length sort)
    pre = tiny_text.preprocessors["text"]
    seen: list[int] = []
    tokenize = pre.tokenize

    def spy(chunk):
        seen.append(len(chunk))
        return tokenize(chunk)

    monkeypatch.setattr(pre, "tokenize", spy)
    monkeypatch.setattr(batching, "TEXT_WINDOW", 100)
    windowed = tiny_text.encode(texts, batch_size=16, convert_to="torch")
    assert seen == [112] * 5 + [40]  # windows of whole batches: 7 x 16 rows
    assert isinstance(windowed, torch.Tensor)
    np.testing.assert_allclose(windowed.numpy(), full, atol=2e-6)
    seen.clear()
    np.testing.assert_allclose(tiny_text.encode(texts, batch_size=16, max_tokens=100), full, atol=2e-6)
    assert max(seen) == 112


def test_memory_beyond_the_output_stays_flat(tiny_text, sts_test):
    """Peak Python/numpy memory (tracemalloc) of encode minus its output: all token ids at once and
    full-size copies of the output made it grow with the input; now it must not."""
    sentences = list(dict.fromkeys(sts_test[0] + sts_test[1]))
    tiny_text.encode(sentences[:64], batch_size=64)  # warm-up

    def extra(n: int) -> int:
        texts = [sentences[i % len(sentences)] for i in range(n)]
        tracemalloc.start()
        try:
            out = tiny_text.encode(texts, batch_size=64)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak - out.nbytes

    small, large = extra(4096), extra(4 * 4096)
    # what remains per input is a few pointers (the list of items, their kinds, their row index);
    # holding every text's token ids at once cost ~850 bytes per text here
    per_text = (large - small) / (3 * 4096)
    assert per_text < 100, (small, large, per_text)
