"""Image decoding of untrusted files: a format allow-list (no plugin starts a program), pixel bounds for
every mode, scaling of high-bit-depth data, and errors naming the item.

A stand-in ``gs`` first on PATH records any call: Pillow's EPS plugin runs Ghostscript to decode, so
a call means an untrusted file reached it."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import embedhub
from embedhub.modules.inputs import IMAGE_FORMATS, load_image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture()
def fake_gs(tmp_path, monkeypatch) -> Path:
    """A ``gs`` (and ``gswin*``) on PATH that records each call in a file."""
    bin_dir, record = tmp_path / "bin", tmp_path / "gs-called"
    bin_dir.mkdir()
    for name in ("gs", "gsc", "gswin32c", "gswin64c"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\nexit 0\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)  # Pillow looks it up again
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None, raising=False)
    return record


def _photo(size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _refused_files() -> dict[str, bytes]:
    """Real files of formats embedhub does not decode, written by Pillow where it can write them."""
    img = _photo((16, 16))
    ps = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 4 4\n0 0 moveto showpage\n"
    files = {"eps": EPS, "ps": ps, "pdf": _encoded(img, "PDF")}
    for fmt in ("ICNS", "SGI", "PPM", "TGA", "ICO", "PCX", "IM", "QOI"):
        try:
            files[fmt.lower()] = _encoded(img, fmt)
        except (KeyError, OSError, ValueError):
            pass
    # PSD: Pillow reads it but cannot write it; a minimal valid 16x16 RGB, raw
    psd = (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + struct.pack(">I", 0) * 3 + struct.pack(">H", 0)
           + bytes(16 * 16 * 3))
    files["psd"] = psd
    return files


@pytest.mark.parametrize("name", list(_refused_files()))
def test_other_formats_are_refused_and_never_start_ghostscript(image_only, fake_gs, tmp_path, name):
    data = _refused_files()[name]
    if name != "pdf":  # Pillow writes PDF but does not read it
        assert Image.open(io.BytesIO(data)).format  # Pillow itself would open it
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"photo-{name}{suffix}"
        path.write_bytes(data)
        with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: not a readable image .*photo-.*accepted formats "
                                                      r"PNG, JPEG, WEBP, GIF, BMP, TIFF"):
            image_only.encode([_encoded(_photo(), "PNG"), path])
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: not a readable image \(\d+ bytes\): format"):
        image_only.encode([data])
    assert not fake_gs.exists(), fake_gs.read_text()


def test_the_stand_in_gs_records_pillows_call(fake_gs):
    """The probe works: Pillow left to itself runs the stand-in gs on an EPS file."""
    with pytest.raises(Exception):  # noqa: B017 - the stand-in writes no page: Pillow fails after calling it
        Image.open(io.BytesIO(EPS)).load()
    assert fake_gs.exists()


def test_eps_is_named_and_lazy_eps_pil_image_is_refused(image_only, fake_gs, tmp_path):
    with pytest.raises(embedhub.InputError, match=r"format PostScript / EPS is not one of the accepted"):
        image_only.encode(EPS)
    path = tmp_path / "x.png"
    path.write_bytes(EPS)
    lazy = Image.open(path)  # the user's own open: Pillow identifies EPS; loading it would run gs
    assert lazy.format == "EPS"
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: PIL image of format EPS is not loaded yet"):
        image_only.encode([lazy])
    disguised = Image.open(path)
    disguised.format = "PNG"  # the instance attribute is the caller's to set; the plugin class decides
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: PIL image of format EPS is not loaded yet"):
        image_only.encode([disguised])
    assert not fake_gs.exists()


def test_training_and_export_decoders_use_the_allow_list(fake_gs, tmp_path):
    from training.data.images import captioned_folder
    from training.errors import DataError

    (tmp_path / "a.png").write_bytes(EPS)
    (tmp_path / "c.csv").write_text("image,caption\na.png,an eps\n")
    with pytest.raises(DataError, match=r"c\.csv line 2: not a readable image .*a\.png.*PostScript"):
        list(captioned_folder(tmp_path / "c.csv"))
    assert not fake_gs.exists()


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True}),
                                     ("GIF", {}), ("BMP", {}), ("TIFF", {})])
def test_every_allowed_format_still_decodes(image_only, tmp_path, fmt, kw):
    assert fmt in IMAGE_FORMATS
    img = _photo()
    data = _encoded(img, fmt, **kw)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    a, b, c = image_only.encode([path, data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))])
    np.testing.assert_allclose(a, c, atol=1e-6)
    np.testing.assert_allclose(b, c, atol=1e-6)


def test_animated_gif_and_multipage_tiff_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    for fmt in ("GIF", "TIFF", "WEBP", "PNG"):
        buf = io.BytesIO()
        frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
        rgb = np.asarray(load_image(buf.getvalue(), 0))
        assert rgb.shape == (10, 20, 3)
        assert rgb[..., 0].mean() > 200 and rgb[..., 2].mean() < 50, fmt  # red: the first frame


def test_every_mode_decodes_to_rgb_with_high_bit_depth_scaled(tmp_path):
    ramp16 = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    expected = [0, 0, 1, 1, 128, 255]
    for fmt in ("PNG", "TIFF"):
        rgb = np.asarray(load_image(_encoded(Image.fromarray(ramp16), fmt), 0))
        np.testing.assert_array_equal(rgb[0, :, 1], expected)
    f = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(load_image(_encoded(Image.fromarray(f), "TIFF"), 0))[0, :, 0],
                                  [0, 128, 255, 64])
    base = _photo((33, 17))
    for mode in ("1", "L", "P", "LA", "RGBA", "CMYK", "I"):
        img = base.convert(mode)
        fmt = "TIFF" if mode in ("CMYK", "I", "LA") else "PNG"
        out = load_image(_encoded(img, fmt), 0)
        assert out.mode == "RGB" and out.size == (33, 17), mode
    # 16-bit RGB PNG, written by hand (Pillow cannot write it): read and scaled to 8 bits
    raw = b"".join(b"\0" + np.full((4, 3), 65535, ">u2").tobytes() for _ in range(2))
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 16, 2, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    assert (np.asarray(load_image(png, 0)) == 255).all()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose data is one tiny compressed row."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 8)) + _chunk(b"IEND", b""))


def test_bombs_and_lying_headers_are_refused_before_allocation(image_only):
    cases = {
        "1x100000000 PNG": (_png_header_only(1, 100_000_000), r"exceeds the limit|decompression bomb"),
        "16-bit 20000x20000 PNG": (_png_header_only(20000, 20000, 16), r"exceeds the limit|decompression bomb"),
        "0x0 PNG": (_png_header_only(0, 0), r"not a readable image|zero size"),
        "truncated PNG": (_encoded(_photo((64, 64)), "PNG")[:300], r"corrupt or truncated image"),
        "JPEG with a lying header": (_lying_jpeg(), r"exceeds the limit|decompression bomb|corrupt or truncated"),
    }
    for name, (data, match) in cases.items():  # noqa: B007 - name shows in a failure's locals
        with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: .*(" + match + ")"):
            image_only.encode([_encoded(_photo(), "PNG"), data])


def _lying_jpeg() -> bytes:
    """A real JPEG whose frame header claims 50000x50000 pixels (data for 32x32)."""
    data = bytearray(_encoded(_photo((32, 32)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 50000, 50000)
    return bytes(data)


def test_extreme_aspect_ratio_is_refused_before_resizing(image_only):
    tall = np.zeros((400_000, 1), dtype=np.uint8)  # 400k pixels: resized to 224 wide it would be 89.6 G pixels
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: image of 1x400000 would be resized to"):
        image_only.encode([_photo(), tall])


_CHILD = """
import io, resource, sys, numpy as np
from PIL import Image
import embedhub
from embedhub.modules.inputs import load_image
w, h = 7000, 7000
arr = (np.arange(w, dtype=np.float32) / w)[None, :].repeat(h, 0) if sys.argv[1] == "F" else np.zeros((h, w), np.uint8)
buf = io.BytesIO(); Image.fromarray(arr).save(buf, format="TIFF"); data = buf.getvalue(); del arr
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image(data, 0)
print(img.mode, img.size[0], img.size[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_float_tiff_conversion_allocates_no_wide_intermediate():
    import subprocess
    import sys

    peaks = {}
    for mode in ("L", "F"):
        out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.split("\n")
        assert lines[0] == "RGB 7000 7000"
        peaks[mode] = int(lines[1])
    # 49 Mpixel: the F image itself is 196 MB; converting it whole took ~3 float copies more
    assert peaks["F"] < peaks["L"] + 300, peaks


def test_unicode_paths_and_nul_bytes_name_the_item(image_only, tmp_path):
    name = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8: surrogate-escaped
    path = tmp_path / name
    path.write_bytes(_encoded(_photo(), "PNG"))
    assert image_only.encode([path]).shape == (1, 16)
    path.write_bytes(EPS)
    with pytest.raises(embedhub.InputError) as info:
        image_only.encode(["", path][1:])
    msg = str(info.value)
    msg.encode("utf-8")  # printable: no lone surrogates in the message
    assert msg.startswith("inputs[0]:") and "caf\\xe9-\\xff.png" in msg
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: .*(not a valid file name|cannot read)"):
        image_only.encode([Path("a\0b.png")])
