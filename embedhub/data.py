"""The STS Benchmark (STS-B): found on this machine, or downloaded once from the Hugging Face Hub.

STS-B is looked for in this order:

1. ``$EMBEDHUB_STSB_DIR``: a folder with ``sts-train.csv``, ``sts-dev.csv`` and ``sts-test.csv`` in the original
   tab-separated layout (genre, file, year, id, score, sentence1, sentence2[, extra columns]);
2. ``shared/data/stsbenchmark`` in the folder that holds the embedhub checkout, when it has those files;
3. the Hugging Face cache copy of the dataset ``sentence-transformers/stsb`` (``data/{train,validation,test}
   -00000-of-00001.parquet``, scores divided by 5), found offline; ``embedhub data stsb`` puts it there.

>>> from embedhub.data import read_stsb
>>> s1, s2, score = read_stsb("test")[0]  # doctest: +SKIP
>>> (s1, s2, score)  # doctest: +SKIP
('A girl is styling her hair.', 'A girl is brushing her hair.', 2.5)
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from embedhub.errors import ArgumentError, DataFileError, DataNotFoundError, require

__all__ = ["ENV_VAR", "HUB_REPO", "SPLITS", "download_stsb", "read_stsb", "stsb_dir"]

logger = logging.getLogger("embedhub")

ENV_VAR = "EMBEDHUB_STSB_DIR"
HUB_REPO = "sentence-transformers/stsb"
SPLITS = ("train", "dev", "test")
ROWS = {"train": 5749, "dev": 1500, "test": 1379}  # of the original release (and the Hub copy)
MAX_FILE_BYTES = 64 * 2**20  # the real files are under 1 MB each
CONNECT_TIMEOUT_S = 5.0  # the Hub's TCP connection, tried before any download
ETAG_TIMEOUT_S = 10.0
GET_IT = "run `embedhub data stsb` (or set EMBEDHUB_STSB_DIR)"
_HUB_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
_HUB_COLUMNS = ("sentence1", "sentence2", "score")


def _csv_name(split: str) -> str:
    return f"sts-{split}.csv"


def _parquet_name(split: str) -> str:
    return f"data/{_HUB_SPLIT[split]}-00000-of-00001.parquet"


def _check_split(split: object) -> str:
    if split not in SPLITS:
        raise ArgumentError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def _layout(folder: Path) -> str | None:
    """``"csv"`` or ``"parquet"`` when ``folder`` holds every split in that layout, else ``None``."""
    if all((folder / _csv_name(s)).is_file() for s in SPLITS):
        return "csv"
    if all((folder / _parquet_name(s)).is_file() for s in SPLITS):
        return "parquet"
    return None


def _missing(folder: Path) -> list[str]:
    return [_csv_name(s) for s in SPLITS if not (folder / _csv_name(s)).is_file()]


def _explicit_dir(value: str) -> Path:
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(f"{ENV_VAR}={value!r} is not a folder: point it at a folder holding "
                                "sts-train.csv, sts-dev.csv and sts-test.csv, or unset it and run `embedhub data stsb`")
    if _layout(folder) is None:
        raise DataNotFoundError(f"{ENV_VAR}={value!r}: {', '.join(_missing(folder))} not found in that folder "
                                "(expected STS-B's sts-train.csv, sts-dev.csv and sts-test.csv); fix the folder, "
                                "or unset it and run `embedhub data stsb`")
    return folder


def _beside_checkout() -> Path:
    """``shared/data/stsbenchmark`` in the folder that holds this embedhub checkout."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark"


def _hub_cache() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` resolves it, read now (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _cached_snapshot() -> Path | None:
    """The cache's snapshot folder of :data:`HUB_REPO` holding the three parquet files, or ``None`` (offline)."""
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache()
    found = [try_to_load_from_cache(HUB_REPO, _parquet_name(s), cache_dir=cache, repo_type="dataset")
             for s in SPLITS]
    if not all(isinstance(p, str) for p in found):
        return None
    folders = {Path(p).parents[1] for p in found}  # type: ignore[arg-type]
    return folders.pop() if len(folders) == 1 else None


def _not_found(reason: str = "") -> DataNotFoundError:
    cache = _hub_cache()
    return DataNotFoundError(
        f"STS-B not found: {GET_IT}{'. ' + reason if reason else ''} (the Hugging Face cache {cache} has no copy "
        f"of the dataset {HUB_REPO})")


def stsb_dir() -> Path:
    """The folder STS-B is read from: ``$EMBEDHUB_STSB_DIR``, ``shared/data/stsbenchmark`` beside the checkout, or
    the Hugging Face cache copy (see the module docstring). Nothing is downloaded.

    Raises :class:`~embedhub.DataNotFoundError` naming ``embedhub data stsb`` when there is none, and naming the
    variable when ``$EMBEDHUB_STSB_DIR`` is set but is not such a folder.

    >>> stsb_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/datasets--sentence-transformers--stsb/snapshots/ab12.../')
    """
    value = os.environ.get(ENV_VAR, "")
    if value.strip():
        return _explicit_dir(value)
    beside = _beside_checkout()
    if _layout(beside) == "csv":
        return beside
    cached = _cached_snapshot()
    if cached is not None:
        return cached
    raise _not_found()


def _check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataFileError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} an STS-B split can be "
                            "(the real files are under 1 MB)", path=path)


def _score(path: Path, row: int, value: object, scale: float) -> float:
    try:
        score = float(value) * scale  # type: ignore[arg-type]
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score) or not 0.0 <= score <= 5.0:
        span = "0..5" if scale == 1.0 else "0..1 (STS-B's score / 5)"
        raise DataFileError(f"{path}, row {row}: score {value!r} is not a number in {span}", path=path, row=row)
    return round(score, 6)


def _sentence(path: Path, row: int, column: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFileError(f"{path}, row {row}: {column} is {value!r}, expected a non-empty sentence",
                            path=path, row=row)
    return value


def _read_csv(path: Path) -> list[tuple[str, str, float]]:
    _check_size(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path}, row {line}: not UTF-8 text (byte {exc.start})", path=path, row=line) from exc
    rows = []
    reader = csv.reader(io.StringIO(text, newline=None), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        parsed = list(enumerate(reader, 1))
    except csv.Error as exc:  # e.g. a field over the csv module's limit (131,072 characters)
        line = reader.line_num
        raise DataFileError(f"{path}, row {line}: not an STS-B row ({exc})", path=path, row=line) from exc
    for number, row in parsed:
        if len(row) < 7:
            raise DataFileError(f"{path}, row {number}: expected at least 7 tab-separated fields (genre, file, "
                                f"year, id, score, sentence1, sentence2), got {len(row)}", path=path, row=number)
        rows.append((_sentence(path, number, "sentence1", row[5]), _sentence(path, number, "sentence2", row[6]),
                     _score(path, number, row[4], 1.0)))
    if not rows:
        raise DataFileError(f"{path}: no rows", path=path)
    return rows


def _read_parquet(path: Path) -> list[tuple[str, str, float]]:
    pa = require("pyarrow", "parquet", "Reading the Hugging Face copy of STS-B")
    import pyarrow.parquet as pq

    _check_size(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: not a readable parquet file ({exc})", path=path) from exc
    missing = [c for c in _HUB_COLUMNS if c not in schema.names]
    if missing:
        raise DataFileError(f"{path}: column(s) {', '.join(missing)} missing; expected {', '.join(_HUB_COLUMNS)} "
                            f"(got {', '.join(schema.names)})", path=path)
    types = {c: schema.field(c).type for c in _HUB_COLUMNS}
    for c in ("sentence1", "sentence2"):
        if not (pa.types.is_string(types[c]) or pa.types.is_large_string(types[c])):
            raise DataFileError(f"{path}: column {c} is {types[c]}, expected strings", path=path)
    if not (pa.types.is_floating(types["score"]) or pa.types.is_integer(types["score"])):
        raise DataFileError(f"{path}: column score is {types['score']}, expected numbers", path=path)
    try:  # the decoded size, from the footer, before anything is decompressed
        meta = pq.read_metadata(path)
        decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: not a readable parquet file ({exc})", path=path) from exc
    if decoded > MAX_FILE_BYTES:
        raise DataFileError(f"{path}: decodes to {decoded} bytes, more than the {MAX_FILE_BYTES} an STS-B split can "
                            "be (the real files are under 1 MB)", path=path)
    try:
        table = pq.read_table(path, columns=list(_HUB_COLUMNS))
        table.validate(full=True)  # also checks that the strings are UTF-8
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(f"{path}: cannot be read ({exc})", path=path) from exc
    columns = [table.column(c).to_pylist() for c in _HUB_COLUMNS]
    rows = [(_sentence(path, i, "sentence1", a), _sentence(path, i, "sentence2", b), _score(path, i, s, 5.0))
            for i, (a, b, s) in enumerate(zip(*columns), 1)]
    if not rows:
        raise DataFileError(f"{path}: no rows", path=path)
    return rows


def read_stsb(split: str = "test", *, folder: str | os.PathLike[str] | None = None) -> list[tuple[str, str, float]]:
    """STS-B's ``split`` (``"train"``, ``"dev"`` or ``"test"``) as ``(sentence1, sentence2, score)`` rows in file
    order, scores on STS-B's 0-5 scale whatever the source. ``folder`` (default :func:`stsb_dir`) holds either the
    original csv files or the Hub copy's ``data/*.parquet``.

    A malformed file (missing, too few columns, a score that is not a number in range, not UTF-8, oversized) raises
    :class:`~embedhub.DataFileError` naming the file and row; so does a split found by :func:`stsb_dir` that does
    not hold all its rows (5749 / 1500 / 1379). An explicit ``folder`` may hold a subset.

    >>> len(read_stsb("dev"))  # doctest: +SKIP
    1500
    """
    split = _check_split(split)
    where = stsb_dir() if folder is None else Path(folder)
    csv_path, parquet_path = where / _csv_name(split), where / _parquet_name(split)
    if csv_path.is_file() or parquet_path.is_file():
        path = csv_path if csv_path.is_file() else parquet_path
        rows = _read_csv(path) if path == csv_path else _read_parquet(path)
        if folder is None:  # STS-B as found: the whole split, never a cut copy
            _check_rows(path, split, len(rows))
        return rows
    raise DataNotFoundError(f"{csv_path}: STS-B's {split} split is not in {where} (neither {_csv_name(split)} nor "
                            f"{_parquet_name(split)}); {GET_IT}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to the Hub's endpoint, so that a machine without a route fails in
    seconds rather than waiting on ``huggingface_hub``'s retries. Skipped behind a proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise _not_found(f"The Hub ({endpoint}) cannot be reached to download it: {exc}") from exc


def _check_rows(path: Path, split: str, n: int) -> None:
    if n != ROWS[split]:
        raise DataFileError(f"{path}: {n} rows, where STS-B's {split} split has {ROWS[split]}: the file is cut or not "
                            f"STS-B; {GET_IT}", path=path)


def _validate(folder: Path) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        counts[split] = len(read_stsb(split, folder=folder))
        _check_rows(folder / (_csv_name(split) if (folder / _csv_name(split)).is_file() else _parquet_name(split)),
                    split, counts[split])
    return counts


def download_stsb() -> Path:
    """Download STS-B (the dataset ``sentence-transformers/stsb``: three parquet files, about 1 MB) into the
    Hugging Face cache unless it is there already, check the three files and return their snapshot folder.

    Raises :class:`~embedhub.DataNotFoundError` within seconds when the Hub cannot be reached (or
    ``HF_HUB_OFFLINE=1``) and :class:`~embedhub.DataFileError` when a file is malformed.

    >>> download_stsb()  # doctest: +SKIP
    PosixPath('/home/me/.cache/huggingface/hub/datasets--sentence-transformers--stsb/snapshots/ab12.../')
    """
    cached = _cached_snapshot()
    if cached is not None:
        logger.info("STS-B is in the Hugging Face cache: %s", cached)
        _validate(cached)
        return cached
    if _offline():
        raise _not_found("Downloads are off (HF_HUB_OFFLINE=1)")
    _hub_reachable()
    import huggingface_hub

    cache = _hub_cache()
    logger.warning("downloading STS-B (%s, 3 parquet files, about 1 MB) into %s", HUB_REPO, cache)
    try:
        folder = Path(huggingface_hub.snapshot_download(
            repo_id=HUB_REPO, repo_type="dataset", allow_patterns=[_parquet_name(s) for s in SPLITS],
            cache_dir=cache, etag_timeout=ETAG_TIMEOUT_S, library_name="embedhub"))
    except Exception as exc:  # huggingface_hub's and httpx's errors: offline, timeouts, HTTP status
        raise _not_found(f"Downloading {HUB_REPO} failed: {type(exc).__name__}: {exc}") from exc
    if _layout(folder) != "parquet":
        absent = [_parquet_name(s) for s in SPLITS if not (folder / _parquet_name(s)).is_file()]
        raise DataFileError(f"{folder}: the download of {HUB_REPO} lacks {', '.join(absent)}", path=folder)
    _validate(folder)
    return folder
