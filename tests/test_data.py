"""Training data readers on real images: webdataset shards round trip, captioned folders, bounded paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.images import Sample, captioned_folder, expand_shards, webdataset, write_webdataset


def _digits(n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    return [(np.kron((d.images[i] * 15).astype(np.uint8), np.ones((4, 4), np.uint8)), int(d.target[i]))
            for i in range(n)]


def test_webdataset_round_trip(tmp_path):
    samples = [Sample(f"{i:05d}", img, f"a handwritten digit {y}", y) for i, (img, y) in enumerate(_digits(10))]
    paths = write_webdataset(samples, str(tmp_path / "shard-{:03d}.tar"), per_shard=4)
    assert len(paths) == 3 and expand_shards(str(tmp_path / "shard-{000..002}.tar")) == paths
    back = list(webdataset(str(tmp_path / "shard-{000..002}.tar")))
    assert [s.key for s in back] == [s.key for s in samples]
    assert [s.caption for s in back] == [s.caption for s in samples] and [s.label for s in back] == list(
        range(10))
    np.testing.assert_array_equal(np.asarray(back[3].image)[:, :, 0], samples[3].image)


def test_captioned_folder_csv_jsonl_and_bounds(tmp_path):
    from PIL import Image

    for i, (img, _) in enumerate(_digits(3)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.csv").write_text("image,caption\n0.png,zero\n1.png,one\n")
    assert [s.caption for s in captioned_folder(tmp_path / "captions.csv")] == ["zero", "one"]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"image": f"{i}.png", "caption": str(i)}) for i in range(3)))
    assert len(list(captioned_folder(tmp_path / "c.jsonl"))) == 3
    (tmp_path / "bad.csv").write_text("image,caption\n../../etc/passwd,x\n")
    with pytest.raises(ValueError, match="leaves the data folder"):
        list(captioned_folder(tmp_path / "bad.csv"))
    (tmp_path / "bad.jsonl").write_text('{"image": "0.png"}\n')
    with pytest.raises(ValueError, match="line 1: expected JSON with 'image' and 'caption'"):
        list(captioned_folder(tmp_path / "bad.jsonl"))


def test_captions_naming_a_non_image_or_malformed_rows_fail_naming_the_line(tmp_path):
    from PIL import Image

    from training.errors import DataError, MissingDataError

    Image.fromarray(_digits(1)[0][0]).save(tmp_path / "0.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    cases = {
        "image,caption\n0.png,zero\nnotes.txt,notes\n": r"c\.csv line 3: not a readable image .*notes\.txt",
        "image,caption\n0.png,zero\n0.png,\"unterminated\n0.png,x\n": r"c\.csv line 3: malformed CSV",
        "image,caption\n0.png,zero\n0.png\n": r"c\.csv line 3: 'caption' must be text, got None",
    }
    for text, message in cases.items():
        (tmp_path / "c.csv").write_text(text)
        with pytest.raises(DataError, match=message):
            list(captioned_folder(tmp_path / "c.csv"))
    (tmp_path / "c.csv").write_text("image,caption\n0.png,zero\nmissing.png,x\n")
    with pytest.raises(MissingDataError, match=r"c\.csv line 3: image .*missing\.png does not exist"):
        list(captioned_folder(tmp_path / "c.csv"))
    (tmp_path / "c.jsonl").write_text('{"image": "0.png", "caption": "a"}\n{"image": "notes.txt", "caption": "b"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl line 2: not a readable image"):
        list(captioned_folder(tmp_path / "c.jsonl"))


def test_a_corrupt_shard_member_names_the_shard_and_the_sample(tmp_path):
    import io
    import tarfile

    from training.errors import DataError

    good = write_webdataset([Sample("00000", _digits(1)[0][0], "zero")], str(tmp_path / "s-{:03d}.tar"), 4)[0]
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in (("k1.png", b"\x89PNG\r\n\x1a\n truncated"), ("k1.txt", b"one")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match=r"bad\.tar: sample 'k1': not a readable image"):
        list(webdataset(str(tmp_path / "bad.tar")))
    (tmp_path / "cut.tar").write_bytes(open(good, "rb").read()[:700])
    with pytest.raises(DataError, match=r"cut\.tar: not a readable tar shard"):
        list(webdataset(str(tmp_path / "cut.tar")))


def test_the_clip_command_reports_a_bad_captions_line_and_exits_2(tmp_path, capsys):
    from PIL import Image

    from training.clip import main

    for i, (img, _) in enumerate(_digits(4)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    rows = "".join(f"{i}.png,digit {i}\n" for i in range(4))
    (tmp_path / "c.csv").write_text(f"image,caption\n{rows}notes.txt,notes\n")
    code = main([f"data={tmp_path / 'c.csv'}", "open_clip_model=ViT-B-32", "eval_pairs=2", f"output={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "c.csv line 6: not a readable image" in err and "Traceback" not in err
