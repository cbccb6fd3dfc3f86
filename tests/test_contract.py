"""The public contract between the library and what builds on it.

- No outer package (training/, export/, demos/, benchmarks/) imports a private ``embedhub._*`` name.
- A new tower kind is one class plus one registration: it trains, saves, loads and exports to ONNX
  with no edit anywhere else.
- A new format is one class plus one registration.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_sts
from torch import nn

import embedhub
from embedhub import EmbeddingModel
from embedhub.formats import Format, LoadOptions, ModelParts, detect, format_names, register_format, unregister_format
from embedhub.modules import Tower, register_tower, tower_class, tower_kinds, unregister_tower

ROOT = Path(__file__).resolve().parents[1]
OUTER = ("training", "export", "demos", "benchmarks")


#: packages installed under the embedhub name that are not the library (their own modules may be private)
OUTER_INSTALLED = ("training", "export", "demos")


def private_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every use of a private name of the library (``embedhub._*``, ``embedhub.formats._glob``) in ``source``:
    imports and attribute access. ``embedhub.demos._common`` is a demo's own module, not the library's."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "embedhub":
            names = [f"embedhub.{node.attr}"]
        else:
            continue
        private = [n for n in names if n.split(".")[0] == "embedhub" and n.split(".")[1:2] != []
                   and n.split(".")[1] not in OUTER_INSTALLED
                   and any(p.startswith("_") and not p.startswith("__") for p in n.split(".")[1:])]
        if private:
            found.append(f"{filename}:{node.lineno}: {private[0]}")
    return found


def test_the_checker_finds_private_imports():
    bad = (
        "import embedhub._load\n"
        "from embedhub._modules import Head\n"
        "from embedhub import _formats\n"
        "from embedhub.formats import _glob\n"
        "x = embedhub._backends\n"
    )
    assert len(private_imports(bad)) == 5
    good = ("import embedhub\nfrom embedhub.modules import Head\nfrom ._data import X\nv = embedhub.__version__\n"
            "from embedhub.demos._common import load_model\nimport embedhub.training.model\n")
    assert private_imports(good) == []


def test_outer_packages_use_only_the_public_api():
    files = [p for pkg in OUTER for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert any(p.parts[-2] == "training" for p in files) and any(p.parts[-2] == "export" for p in files)
    problems = [hit for p in files for hit in private_imports(p.read_text(), str(p.relative_to(ROOT)))]
    assert problems == [], "outer packages import private embedhub names:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------ a new tower kind
class MeanEmbeddingTower(Tower):
    """A plain embedding-bag text tower: the masked mean of learned token embeddings."""

    kind = "mean-embedding"
    modality = "text"
    config_keys = ("vocab_size", "dim")

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        return (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)

    @property
    def output_dim(self) -> int:
        return self.embedding.embedding_dim

    def get_config(self) -> dict:
        return {"vocab_size": self.embedding.num_embeddings, "dim": self.embedding.embedding_dim}

    @classmethod
    def from_config(cls, config, folder, *, trust_remote_code=False):
        return cls(config.int("vocab_size", min=1, max=1 << 22), config.int("dim", min=1, max=4096))


@pytest.fixture
def mean_embedding_kind():
    register_tower(MeanEmbeddingTower)
    yield MeanEmbeddingTower
    unregister_tower(MeanEmbeddingTower.kind)


def test_new_tower_kind_trains_saves_loads_and_exports(mean_embedding_kind, minilm, tmp_path):
    from embedhub.export import export
    from embedhub.training.losses import clip_loss

    assert "mean-embedding" in tower_kinds() and tower_class("mean-embedding") is MeanEmbeddingTower
    pre = minilm.preprocessors["text"]  # a real tokenizer (all-MiniLM-L6-v2's)
    torch.manual_seed(0)
    tower = MeanEmbeddingTower(pre.tokenizer.get_vocab_size(), 32)
    # trains: paraphrase pairs of STS-B train (score >= 4) pulled together with the CLIP loss
    s1, s2, score = read_sts("train")
    pairs = [(a, b) for a, b, s in zip(s1, s2, score) if s >= 4.0][:512]

    def embed(texts):
        batch = pre.collate(pre.tokenize(texts))
        return nn.functional.normalize(tower(**{k: torch.from_numpy(v) for k, v in batch.items()}), dim=-1)

    opt = torch.optim.Adam(tower.parameters(), lr=0.05)
    losses = []
    for _epoch in range(3):
        for s in range(0, len(pairs), 64):
            a, b = zip(*pairs[s : s + 64])
            loss = clip_loss(embed(list(a)), embed(list(b)), torch.tensor(20.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])

    model = EmbeddingModel({"text": tower.eval()}, {"text": pre}, embed_dim=32, name="bag", format="embedhub")
    texts = ["A man is playing a guitar.", "A woman slices an onion.", "Two dogs run on the beach."]
    before = model.encode(texts)
    # saves and loads through the registry (config entry, weights, tokenizer)
    folder = model.save_pretrained(tmp_path / "bag")
    import json

    assert json.loads((folder / "embedhub_config.json").read_text())["towers"]["text"]["kind"] == "mean-embedding"
    again = embedhub.load(folder, device="cpu")
    assert isinstance(again.towers["text"], MeanEmbeddingTower)
    np.testing.assert_array_equal(again.encode(texts), before)
    # exports: the ONNX graph passes the parity gate and runs on ONNX Runtime
    out = export(folder, tmp_path / "bag-onnx", verbose=False)
    onnx_model = embedhub.load(out, backend="onnx", device="cpu")
    cos = (onnx_model.encode(texts) * before).sum(1)
    assert cos.min() > 0.99999


def test_unregistered_kind_is_refused_with_the_known_kinds(mean_embedding_kind, minilm, tmp_path):
    tower = MeanEmbeddingTower(minilm.preprocessors["text"].tokenizer.get_vocab_size(), 8)
    folder = EmbeddingModel({"text": tower}, {"text": minilm.preprocessors["text"]}, embed_dim=8, name="bag",
                            format="embedhub").save_pretrained(tmp_path / "bag")
    unregister_tower("mean-embedding")
    with pytest.raises(embedhub.ConfigError, match=r"kind.*registered tower kind \(timm, transformers"):
        embedhub.load(folder, device="cpu")


def test_register_tower_checks_the_class():
    class NoKind(Tower):
        pass

    class Reserved(Tower):
        kind, config_keys = "reserved", ("onnx",)

    with pytest.raises(ValueError, match="kind must be a non-empty string"):
        register_tower(NoKind)
    with pytest.raises(ValueError, match="reserved keys"):
        register_tower(Reserved)
    with pytest.raises(TypeError):
        register_tower(nn.Linear)
    with pytest.raises(ValueError, match="already registered"):
        register_tower(type("Other", (Tower,), {"kind": "timm", "modality": "image"}))


# ------------------------------------------------------------------------------ a new format
class NpzFormat(Format):
    """A toy format: ``bag.json`` (vocab size, dim) + ``bag.safetensors`` + ``tokenizer.json``."""

    name, marker, allow_patterns = "bag", "bag.json", ("bag.json", "bag.safetensors", "tokenizer.json")

    def load(self, folder, options: LoadOptions) -> ModelParts:
        from safetensors.torch import load_file

        from embedhub.modules import load_preprocessor

        cfg = folder.config("bag.json")
        tower = MeanEmbeddingTower(cfg.int("vocab_size", min=1), cfg.int("dim", min=1))
        tower.load_state_dict(load_file(str(folder.file("bag.safetensors"))))
        pre = load_preprocessor(folder, {"kind": "tokenizers", "max_length": 128})
        return ModelParts(towers={"text": tower}, preprocessors={"text": pre}, embed_dim=tower.output_dim)


def test_a_registered_format_loads_by_name(minilm, tmp_path):
    import json

    from safetensors.torch import save_file

    pre = minilm.preprocessors["text"]
    tower = MeanEmbeddingTower(pre.tokenizer.get_vocab_size(), 8)
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "bag.json").write_text(json.dumps({"vocab_size": pre.tokenizer.get_vocab_size(), "dim": 8}))
    save_file(tower.state_dict(), str(folder / "bag.safetensors"))
    pre.save(folder)
    (folder / "notes.txt").write_text("not part of the format")
    with pytest.raises(embedhub.UnknownFormatError, match="matches no format"):
        # not registered yet: nothing matches (the message lists what each format expects)
        register_format_and_detect = detect(folder)  # noqa: F841
    register_format(NpzFormat(), before="sentence-transformers")
    try:
        assert format_names().index("bag") == format_names().index("sentence-transformers") - 1
        assert detect(folder).name == "bag"
        assert NpzFormat().files(folder) == ["bag.json", "bag.safetensors", "tokenizer.json"]
        model = embedhub.load(folder, device="cpu")
        assert model.format == "bag"
        texts = ["a cat", "a dog on a mat"]
        expected = nn.functional.normalize(tower(**{k: torch.from_numpy(v) for k, v in
                                                    pre.collate(pre.tokenize(texts)).items()}), dim=-1)
        np.testing.assert_allclose(model.encode(texts), expected.detach().numpy(), atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            register_format(NpzFormat())
    finally:
        unregister_format("bag")
    assert "bag" not in format_names()


def test_a_save_never_writes_a_folder_that_does_not_load(mean_embedding_kind, minilm, tmp_path):
    pre = minilm.preprocessors["text"]
    vocab = pre.tokenizer.get_vocab_size()

    @register_tower
    class Chatty(MeanEmbeddingTower):  # returns a key it does not declare
        kind = "chatty"

        def get_config(self):
            return {**super().get_config(), "note": "hi"}

    def model(tower, embed_dim=8, modality="text"):
        return EmbeddingModel({modality: tower}, {modality: pre}, embed_dim=embed_dim, name="m", format="embedhub")

    with pytest.raises(ValueError, match=r"\['note'\], which are not in its config_keys"):
        model(Chatty(vocab, 8)).save_pretrained(tmp_path / "a")
    unregister_tower("chatty")
    with pytest.raises(ValueError, match="outputs 8 dims but the model's embed_dim is 16"):
        model(MeanEmbeddingTower(vocab, 8), embed_dim=16).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="is a text tower kind"):
        model(MeanEmbeddingTower(vocab, 8), modality="image").save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="no preprocessor for image"):
        EmbeddingModel({"image": MeanEmbeddingTower(vocab, 8)}, {"text": pre}, embed_dim=8, name="m", format="x")
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_saving_into_an_earlier_save_replaces_the_model(minilm, image_only, tmp_path):
    folder = minilm.save_pretrained(tmp_path / "m")
    (folder / "README.md").write_text("my notes")  # not a file of the format: it stays
    assert (folder / "modules.json").is_file() and (folder / "text" / "model.safetensors").is_file()
    image_only.save_pretrained(folder)
    from embedhub.formats import model_files

    files = model_files(folder)
    assert not any(f.startswith(("text/", "1_Pooling/")) or f == "modules.json" for f in files), files
    assert (folder / "README.md").read_text() == "my notes"
    again = embedhub.load(folder, device="cpu")
    assert again.modalities == ("image",) and again.embed_dim == image_only.embed_dim


def test_tower_files_go_into_an_existing_sub_folder(minilm, tmp_path):
    class Labelled(MeanEmbeddingTower):
        kind = "labelled-mean-embedding"

        def save_files(self, folder):
            (folder / "labels.json").write_text('["a", "b"]')

    register_tower(Labelled)
    try:
        pre = minilm.preprocessors["text"]
        model = EmbeddingModel({"text": Labelled(pre.tokenizer.get_vocab_size(), 4)}, {"text": pre}, embed_dim=4,
                               name="m", format="embedhub")
        folder = model.save_pretrained(tmp_path / "m")
        assert (folder / "text" / "labels.json").read_text() == '["a", "b"]'
        assert embedhub.load(folder, device="cpu").towers["text"].kind == "labelled-mean-embedding"
    finally:
        unregister_tower("labelled-mean-embedding")


def test_saved_folders_get_normal_permissions(minilm, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        folder = minilm.save_pretrained(tmp_path / "m")
    finally:
        os.umask(umask)
    def rel(p):
        return "" if p == folder else p.relative_to(folder).as_posix()

    modes = {rel(p): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    assert modes[""] == 0o755 and modes["text"] == 0o755
    assert modes["model.safetensors"] == 0o644 and modes["text/model.safetensors"] == 0o644
