"""The checks a recipe config's rules run on the data it names, before any work: the pair data
(``data`` / ``eval_data``), the sentence file of the sentence recipes, and STS-B for their evaluation.

Each raises :class:`~training.errors.ConfigValueError` naming the key, or returns a reason.

>>> pair_data_problem("data", "fashion-mnist") is None
True
>>> pair_data_problem("eval_data", "pairs.txt")
'a .csv/.jsonl captions file or wds:<shard pattern>'
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigValueError
from .images import expand_shards
from .sentences import SUFFIXES, data_mode


def pair_data_problem(key: str, spec: str) -> str | None:
    """Why ``spec`` (data or eval_data) cannot be read, or None."""
    if spec.startswith("wds:"):
        if not spec[4:]:
            return "wds:<shard pattern>, e.g. wds:shards/train-{000..015}.tar"
        missing = [s for s in expand_shards(spec[4:]) if not Path(s).is_file()]
        return f"existing webdataset shards (missing: {missing[:3]})" if missing else None
    if key == "data" and spec == "fashion-mnist":
        return None
    path = Path(spec)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        return ("fashion-mnist, " if key == "data" else "") + "a .csv/.jsonl captions file or wds:<shard pattern>"
    return None if path.is_file() else f"an existing captions file ({path} not found)"


def check_sentence_data(data: str, text_column: str, *, unsupervised_only: bool) -> None:
    """``data`` must be an existing sentence file; ``unsupervised_only`` (ESimCSE): a file of sentences, not of
    (anchor, positive) rows."""
    path = Path(data)
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigValueError("data", data, "a .txt file (one sentence a line), or a .jsonl/.csv/.parquet file "
                               "with a text_column or anchor, positive[, negative] fields")
    if not path.is_file():
        raise ConfigValueError("data", data, f"an existing sentence file ({path} not found)")
    if unsupervised_only and data_mode(path, text_column) == "supervised":
        raise ConfigValueError("data", data, f"a file of sentences (a .txt, or a {text_column!r} "
                               "field/column): ESimCSE is unsupervised and this file holds (anchor, positive) rows; "
                               "train supervised SimCSE on it with the simcse recipe")


def check_sts_dir(sts_dir: str) -> None:
    """``sts_dir=''`` needs STS-B where embedhub.data finds it; a folder needs STS-B's dev and test splits (csv, or
    the Hub copy's parquet files)."""
    from embedhub import DataNotFoundError
    from embedhub.data import stsb_dir

    if not sts_dir.strip():
        try:
            stsb_dir()
        except DataNotFoundError as exc:
            raise ConfigValueError("sts_dir", sts_dir, f"STS-B to be found ({exc})") from exc
        return
    for split, name in (("validation", "sts-dev.csv"), ("test", "sts-test.csv")):
        folder = Path(sts_dir)
        if not (folder / name).is_file() and not (folder / "data" / f"{split}-00000-of-00001.parquet").is_file():
            raise ConfigValueError("sts_dir", sts_dir, f"a folder holding STS-B's {name} (not found there; "
                                   "sts_dir='' reads STS-B where `embedhub data stsb` puts it)")


__all__ = ["check_sentence_data", "check_sts_dir", "pair_data_problem"]
