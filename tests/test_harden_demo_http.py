"""Hostile probes of the running demos over real HTTP on 127.0.0.1 (httpx against Gradio's own routes).

- Retrieval: a gallery folder that also holds ``.env`` and ``.git/config`` is indexed; only thumbnails the app
  made are served: ``/gradio_api/file=`` refuses the secrets, the gallery's own images, a file added after
  indexing, a link to /etc/passwd, and traversal spellings (``..``, URL-encoded, double-encoded). An indexed
  image swapped for a link after indexing is shown as a placeholder, never followed. A gallery path that is a
  link and a gallery file whose content is EPS are refused by name.
- Zero-shot: ``/load_model`` on /etc and an ``~/.ssh``-like folder answers without any file name of them (nor
  the contents of a bogus config file); it is refused on a server built with model loading off (what
  :func:`launch` does off loopback unless enabled); refused and repeated spellings leave the model cache at
  most ``MODEL_CACHE_SIZE`` entries of accepted models, with the server's resident memory measured in /proc.
- Both: an EPS file named ``x.png`` is refused without Ghostscript ever running (a stand-in ``gs`` first on
  PATH records any call), and an upload over the size limit is refused by the server (413).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("faiss")
pytest.importorskip("open_clip")
import httpx
from conftest import save_tiny_open_clip

SECRET = "EMBEDHUB_TEST_SECRET_d41d8cd98f"
EPS = ("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       "newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, api: str, *args) -> tuple[bool, object]:
    """One named endpoint through Gradio's HTTP API (POST, then the event stream): (ok, data or error text)."""
    r = httpx.post(f"{base}gradio_api/call/{api}", json={"data": list(args)}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    event_id = r.json()["event_id"]
    with httpx.stream("GET", f"{base}gradio_api/call/{api}/{event_id}", timeout=300) as stream:
        text = "".join(stream.iter_text())
    events = text.split("\n\n")
    for block in events:
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "complete":
            return True, json.loads(lines["data"])
        if lines.get("event") == "error":
            return False, lines.get("data", "")
    raise AssertionError(f"no result from {api}: {text[:500]}")


def upload(base: str, name: str, data: bytes) -> dict:
    r = httpx.post(f"{base}gradio_api/upload", files={"files": (name, data, "image/png")}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}, "orig_name": name}


def fetch(base: str, path: str) -> httpx.Response:
    return httpx.get(f"{base}gradio_api/file={path}", timeout=30)


def refused(response: httpx.Response) -> bool:
    return response.status_code in (403, 404) and SECRET not in response.text and "root:x:0:0" not in response.text


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fake_gs(tmp_path_factory):
    """A stand-in ``gs`` first on PATH (before any server starts) that records each call in a file."""
    folder = tmp_path_factory.mktemp("fake_gs")
    record = folder / "gs-called"
    script = folder / "gs"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}{os.pathsep}{old}"
    from PIL import EpsImagePlugin

    EpsImagePlugin.gs_binary = None  # Pillow looks gs up again, finding the stand-in
    yield record
    os.environ["PATH"] = old
    EpsImagePlugin.gs_binary = None


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_open_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """A folder of 6 images (one in a sub-folder) that also holds ``.env`` and ``.git/config``."""
    from embedhub.demos._common import example_images

    folder = tmp_path_factory.mktemp("gallery") / "photos"
    (folder / "sub").mkdir(parents=True)
    pngs = [p for p in example_images() if p.suffix == ".png"][:6]
    for p in pngs[:5]:
        shutil.copyfile(p, folder / p.name)
    shutil.copyfile(pngs[5], folder / "sub" / pngs[5].name)
    (folder / ".env").write_text(f"API_KEY={SECRET}\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text(f"[remote]\n  url = https://user:{SECRET}@example.invalid/x\n")
    return folder


@pytest.fixture(scope="module")
def retrieval(fake_gs, clip_dir, tiny_st_dir, gallery, tmp_path_factory):
    from embedhub.demos.retrieval.app import launch

    demo = launch(model=str(clip_dir), text_model=str(tiny_st_dir), gallery=gallery, port=free_port(),
                  index_dir=tmp_path_factory.mktemp("index"), prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def zero_shot(fake_gs, clip_dir):
    from embedhub.demos.zero_shot.app import launch

    demo = launch(model=str(clip_dir), host="127.0.0.1", port=free_port(), prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


def served_images(base: str, k: int = 50) -> list[str]:
    ok, data = call(base, "search_images_by_text", "a photo", k)
    assert ok, data
    return [item["image"]["path"] for item in data[0]]


# ------------------------------------------------------------------------------ retrieval: what is served
def test_gallery_secrets_and_images_are_never_served(retrieval, gallery):
    for path in (gallery / ".env", gallery / ".git" / "config", next(gallery.glob("*.png")),
                 gallery / "sub" / next((gallery / "sub").iterdir()).name):
        assert refused(fetch(retrieval, str(path))), path
    shown = served_images(retrieval)
    assert len(shown) == 6
    for path in shown:
        assert not Path(path).is_relative_to(gallery), path
        r = fetch(retrieval, path)
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n" and SECRET.encode() not in r.content
        sibling = str(Path(path).parent / ".env")  # nothing else beside a served thumbnail
        assert refused(fetch(retrieval, sibling))


def test_files_added_after_indexing_and_links_are_not_served(retrieval, gallery):
    from embedhub.demos._common import example_images

    later = gallery / "later.png"
    shutil.copyfile(example_images()[0], later)
    link = gallery / "passwd.png"
    link.symlink_to("/etc/passwd")
    try:
        assert refused(fetch(retrieval, str(later))) and refused(fetch(retrieval, str(link)))
        shown = served_images(retrieval)
        assert len(shown) == 6 and not any(Path(p).name in ("later.png", "passwd.png") for p in shown)
    finally:
        later.unlink()
        link.unlink()


def test_an_indexed_image_swapped_for_a_link_is_not_followed(retrieval, gallery):
    victim = sorted(gallery.glob("*.png"))[0]
    saved = victim.read_bytes()
    victim.unlink()
    victim.symlink_to("/etc/passwd")
    try:
        ok, data = call(retrieval, "search_images_by_text", "a photo", 50)
        assert ok, data
        captions = {item["caption"].split(" · ")[0]: item for item in data[0]}
        assert "no longer readable" in captions[victim.name]["caption"]
        for item in data[0]:
            assert "root:x:0:0" not in fetch(retrieval, item["image"]["path"]).text
    finally:
        victim.unlink()
        victim.write_bytes(saved)


@pytest.mark.parametrize("spelling", [
    "/etc/passwd",
    "{cache}/../../../../../../etc/passwd",
    "{cache}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "{cache}%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "{cache}/%252e%252e/%252e%252e/%252e%252e/%252e%252e/etc/passwd",
    "{gallery}/../../../../../../../etc/passwd",
    "{gallery}/.env",
    "{gallery}/%2eenv",
    "{gallery}/.git/../.env",
])
def test_traversal_on_the_file_route_is_refused(retrieval, gallery, spelling):
    cache = str(Path(served_images(retrieval, 1)[0]).parent)
    path = spelling.format(cache=cache, gallery=gallery)
    r = httpx.get(f"{retrieval}gradio_api/file={path}", timeout=30)
    assert refused(r), (path, r.status_code, r.text[:200])


def test_gallery_links_and_eps_content_are_refused_by_name(retrieval, gallery, tmp_path, fake_gs):
    link_root = tmp_path / "link-to-gallery"
    link_root.symlink_to(gallery)
    ok, message = call(retrieval, "index_gallery", str(link_root))
    assert not ok and "is a symbolic link" in message
    inside = tmp_path / "with-link"
    inside.mkdir()
    shutil.copyfile(next(gallery.glob("*.png")), inside / "ok.png")
    (inside / "passwd.png").symlink_to("/etc/passwd")
    ok, message = call(retrieval, "index_gallery", str(inside))
    assert not ok and "passwd.png (a link" in message and "root:" not in message
    eps = tmp_path / "with-eps"
    eps.mkdir()
    shutil.copyfile(next(gallery.glob("*.png")), eps / "ok.png")
    (eps / "drawing.png").write_text(EPS)
    ok, message = call(retrieval, "index_gallery", str(eps))
    assert not ok and "drawing.png (not a PNG/JPEG/WebP/GIF/BMP/TIFF image)" in message
    assert not fake_gs.exists()
    assert len(served_images(retrieval)) == 6  # the indexed gallery is still the current one


# ------------------------------------------------------------------------------ uploads
def test_eps_named_png_never_reaches_ghostscript(retrieval, zero_shot, fake_gs, tmp_path):
    # the probe can fail: Pillow decoding this file runs the stand-in gs
    probe = tmp_path / "probe.png"
    probe.write_text(EPS)
    code = "import sys\nfrom PIL import Image\ntry:\n    Image.open(sys.argv[1]).load()\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code, str(probe)], env=dict(os.environ), timeout=60)
    assert fake_gs.exists(), "the stand-in gs was not found by Pillow: the probe below would prove nothing"
    fake_gs.unlink()

    ok, message = call(zero_shot, "classify", upload(zero_shot, "x.png", EPS.encode()), "cat, dog", "")
    assert not ok and "is not an image" in message
    ok, message = call(retrieval, "search_images_by_image", upload(retrieval, "x.png", EPS.encode()), 5)
    assert not ok and "is not an image" in message
    assert not fake_gs.exists(), fake_gs.read_text()


def test_file_data_naming_a_file_outside_the_uploads_is_refused(retrieval, zero_shot, gallery):
    for target in ("/etc/passwd", str(gallery / ".env"), str(next(gallery.glob("*.png")))):
        payload = {"path": target, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
        ok, message = call(retrieval, "search_images_by_image", payload, 5)
        assert not ok and SECRET not in str(message) and "root:x" not in str(message), message
        ok, message = call(zero_shot, "classify", payload, "cat, dog", "")
        assert not ok and SECRET not in str(message) and "root:x" not in str(message), message


def test_oversized_uploads_are_refused(retrieval, zero_shot, tmp_path):
    import struct
    import zlib

    from embedhub.demos._common import MAX_UPLOAD_BYTES

    big = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD_BYTES + 1)
    for base in (retrieval, zero_shot):
        r = httpx.post(f"{base}gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
        assert r.status_code == 413, r.text[:200]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 30_001 * 2)))
    ok, message = call(zero_shot, "classify", upload(zero_shot, "bomb.png", bomb), "cat, dog", "")
    assert not ok and "900.0 megapixels, over the 40 megapixel limit" in message


# ------------------------------------------------------------------------------ zero-shot: /load_model
def test_load_model_reports_no_directory_contents(zero_shot, tmp_path):
    ssh = tmp_path / "ssh"
    ssh.mkdir()
    for name in ("id_ed25519", "id_ed25519.pub", "authorized_keys", "known_hosts"):
        (ssh / name).write_text(SECRET)
    bogus = tmp_path / "bogus-model"
    bogus.mkdir()
    (bogus / "modules.json").write_text(f"[{{'{SECRET}'")
    (bogus / "config.json").write_text(SECRET)
    etc_names = [n for n in os.listdir("/etc") if len(n) > 5][:40]
    for folder, names in (("/etc", etc_names), (str(ssh), os.listdir(ssh)), (str(bogus), [SECRET]),
                          ("/etc/../etc", etc_names), (str(ssh) + "/", os.listdir(ssh))):
        ok, message = call(zero_shot, "load_model", folder, "torch")
        assert not ok and ("cannot be loaded" in message or "not found" in message), message
        leaked = [n for n in names if n in message]
        assert not leaked, (folder, leaked, message)


def test_load_model_is_off_unless_loopback_or_enabled(clip_dir, monkeypatch):
    from embedhub.demos._common import allow_model_loading
    from embedhub.demos.zero_shot.app import build_app

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("EMBEDHUB_DEMO_ALLOW_MODEL_LOADING", raising=False)
    assert allow_model_loading("127.0.0.1") and allow_model_loading("::1") and allow_model_loading("localhost")
    assert not any(allow_model_loading(h) for h in ("0.0.0.0", "::", "192.168.1.7", "example.org", ""))
    assert not allow_model_loading("127.0.0.1", share=True)
    assert allow_model_loading("0.0.0.0", allow=True) and not allow_model_loading("127.0.0.1", allow=False)
    monkeypatch.setenv("EMBEDHUB_DEMO_ALLOW_MODEL_LOADING", "1")
    assert allow_model_loading("0.0.0.0")
    monkeypatch.setenv("EMBEDHUB_DEMO_ALLOW_MODEL_LOADING", "0")
    assert not allow_model_loading("127.0.0.1")
    monkeypatch.delenv("EMBEDHUB_DEMO_ALLOW_MODEL_LOADING")
    monkeypatch.setenv("SPACE_ID", "org/space")
    assert not allow_model_loading("127.0.0.1")
    monkeypatch.delenv("SPACE_ID")

    # what launch() builds for a non-loopback host: the endpoint answers with a refusal and loads nothing
    demo = build_app(str(clip_dir), model_loading=allow_model_loading("0.0.0.0"))
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        ok, message = call(demo.local_url, "load_model", "/etc", "torch")
        assert not ok and "turned off" in message and "--allow-model-loading" in message
    finally:
        demo.close()
    demo = build_app(str(clip_dir), model_loading=True)  # enabled explicitly
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        ok, data = call(demo.local_url, "load_model", str(clip_dir), "torch")
        assert ok and "on **torch**" in data[1], data
    finally:
        demo.close()


def test_model_cache_is_bounded_and_keeps_only_accepted_models(zero_shot, clip_dir, minilm_path, tmp_path):
    from embedhub.demos import _common

    text_only = tmp_path / "text-only"
    shutil.copytree(minilm_path, text_only)  # 90 MB of weights per load: a leak would show in RSS
    spellings = [str(text_only), f"{text_only}/", f"{text_only}/.", f"{tmp_path}/./text-only",
                 f"{tmp_path}//text-only", f"{tmp_path}/../{tmp_path.name}/text-only"]
    for name in spellings[:2]:  # warm up: the first load imports the text stack (~700 MB, once per process)
        assert not call(zero_shot, "load_model", name, "torch")[0]
    before = rss_mb()
    for round_ in range(2):
        for name in spellings:
            ok, message = call(zero_shot, "load_model", name, "torch")
            assert not ok and "embeds only text" in message, message
        for i in range(5):
            ok, _ = call(zero_shot, "load_model", f"{tmp_path}/no-such-model-{round_}-{i}", "torch")
            assert not ok
    grown = rss_mb() - before
    keys = _common.model_cache()
    assert len(keys) <= _common.MODEL_CACHE_SIZE and not any("text-only" in k for k, _ in keys), keys
    assert grown < 200, f"server RSS grew {grown:.0f} MB over 12 refused loads of a 90 MB model"

    # accepted models: distinct folders evict the least recently used; spellings of one folder share an entry
    folders = [save_tiny_open_clip(tmp_path / f"clip{seed}", seed=seed) for seed in range(1, 6)]
    for folder in folders:
        for name in (str(folder), f"{folder}/", f"{folder.parent}/./{folder.name}"):
            ok, data = call(zero_shot, "load_model", name, "torch")
            assert ok, data
    keys = _common.model_cache()
    assert len(keys) == _common.MODEL_CACHE_SIZE
    assert [k for k, _ in keys] == [str(f.resolve()) for f in folders[-_common.MODEL_CACHE_SIZE:]]
    ok, data = call(zero_shot, "load_model", str(clip_dir), "torch")  # the first one again: loaded again
    assert ok and len(_common.model_cache()) == _common.MODEL_CACHE_SIZE
