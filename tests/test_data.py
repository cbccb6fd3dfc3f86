"""Training data readers on real images: webdataset shards round trip, captioned folders, bounded paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import Sample, captioned_folder, expand_shards, webdataset, write_webdataset


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
