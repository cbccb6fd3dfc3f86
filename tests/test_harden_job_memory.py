"""Readers bounded before they allocate: each hostile input runs in a child process that prints its peak RSS,
compared with a child doing the same over a benign input of the same kind."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from conftest import sparse_tar

import embedhub

#: what a bounded reader may take above the benign run (the hostile inputs would take gigabytes)
SLACK_MB = 300

_CHILD = textwrap.dedent("""
    import resource, sys, embedhub
    kind, model, source, out = sys.argv[1:5]
    try:
        if kind == "embed":
            embedhub.embed_corpus(model, source, out, progress=False, workers=1, shard_rows=4)
        else:
            embedhub.read_embeddings(source)
        print("ok")
    except (embedhub.CorpusError, embedhub.EmbeddingsFileError) as exc:
        print("refused:", str(exc)[:300])
    usage = resource.getrusage
    peak = max(usage(resource.RUSAGE_SELF).ru_maxrss, usage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("peak_kb", peak)
""")


def _peak(kind: str, model: Path | str, source: Path, out: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, kind, str(model), str(source), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("peak_kb "), proc.stdout
    return int(lines[-1].split()[1]) // 1024, "\n".join(lines[:-1])


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, streamed (a member is written without holding it)."""

    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


def _png(photos, size: int = 40) -> bytes:
    buf = io.BytesIO()
    photos[0].resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def benign_image_peak(tmp_path_factory, tiny_embedhub_dir, photos) -> int:
    root = tmp_path_factory.mktemp("benign_tar")
    path = sparse_tar(root / "ok.tar", [("a.png", _png(photos)), ("b.png", _png(photos, 48))])
    peak, said = _peak("embed", tiny_embedhub_dir, path, root / "out")
    assert said == "ok"
    return peak


def test_sparse_3gb_tar_image_member_is_not_read(tmp_path, tiny_embedhub_dir, photos, benign_image_peak):
    path = sparse_tar(tmp_path / "bomb.tar", [("a.png", _png(photos)), ("b.jpg", 3 << 30)])
    peak, said = _peak("embed", tiny_embedhub_dir, path, tmp_path / "out")
    assert said == "ok"
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["b"] and "over the" in errors[0]["reason"]
    assert peak < benign_image_peak + SLACK_MB, (peak, benign_image_peak)


def test_800mb_non_image_member_of_a_gzip_tar_is_skipped_unread(tmp_path, tiny_embedhub_dir, photos,
                                                                  benign_image_peak):
    path = tmp_path / "big.tar"  # gzip data under a .tar name, as webdataset tools write it
    png = _png(photos)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, size, data in (("a.png", len(png), io.BytesIO(png)),
                                 ("a.txt", 800 << 20, io.BufferedReader(_Zeros(800 << 20), 1 << 20)),
                                 ("b.png", len(png), io.BytesIO(png))):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, data)
    peak, said = _peak("embed", tiny_embedhub_dir, path, tmp_path / "out")
    assert said == "ok"
    assert embedhub.read_embeddings(tmp_path / "out").ids == ["a", "b"]
    assert peak < benign_image_peak + SLACK_MB, (peak, benign_image_peak)


def test_150mb_jsonl_line_is_refused_with_bounded_memory(tmp_path, tiny_st_dir):
    benign = tmp_path / "ok.jsonl"
    benign.write_text("".join(json.dumps({"text": f"short line {i}"}) + "\n" for i in range(8)))
    base, said = _peak("embed", tiny_st_dir, benign, tmp_path / "a")
    assert said == "ok"
    path = tmp_path / "long.jsonl"
    with open(path, "w") as fh:
        fh.write(json.dumps({"text": "fine"}) + "\n")
        fh.write('{"text": "')
        chunk = "word " * (1 << 18)
        for _ in range(150 * (1 << 20) // len(chunk)):
            fh.write(chunk)
        fh.write('"}\n')
    peak, said = _peak("embed", tiny_st_dir, path, tmp_path / "b")
    assert said.startswith("refused:") and "long.jsonl line 2: longer than" in said
    assert peak < base + SLACK_MB, (peak, base)


def test_forged_npy_header_over_a_sparse_file_is_refused_unread(tmp_path):
    import numpy as np
    from numpy.lib import format as npy

    np.save(tmp_path / "ok.npy", np.ones((100, 8), np.float32))
    base, said = _peak("read", "-", tmp_path / "ok.npy", tmp_path)
    assert said == "ok"
    path = tmp_path / "forged.npy"
    with open(path, "wb") as fh:  # says 6.4 GB of float32, holds 1.5 GB (a hole on disk)
        npy.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (400_000_000, 4)})
        fh.truncate(fh.tell() + (1536 << 20))
    peak, said = _peak("read", "-", path, tmp_path)
    assert peak < base + SLACK_MB, (peak, base)
    assert said.startswith("refused:") and "its header says" in said


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME,
                                  tarfile.GNUTYPE_LONGLINK])
def test_sparse_tar_declaring_a_huge_extended_header_is_refused_unread(tmp_path, tiny_embedhub_dir, photos,
                                                                       benign_image_peak, kind):
    path = tmp_path / "ext.tar"
    with open(path, "wb") as raw:  # a 1.5 GB extended header, a hole on disk
        info = tarfile.TarInfo("././@LongLink" if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
                               else "././@PaxHeader")
        info.type, info.size = kind, 1_500_000_000
        raw.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        raw.seek(info.size + 512, os.SEEK_CUR)
        raw.write(b"\0" * 1024)
    peak, said = _peak("embed", tiny_embedhub_dir, path, tmp_path / "out")
    assert said.startswith("refused:") and "ext.tar: an extended tar header" in said, said
    assert peak < benign_image_peak + SLACK_MB, (peak, benign_image_peak)
