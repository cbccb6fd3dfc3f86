"""Real unlabelled English sentences for the sentence recipes, from files that install offline.

- ``stsb``: the unique sentences of STS-B train (found by :mod:`embedhub.data`; ``embedhub data stsb`` gets
  it), without their scores (10,518 unique sentences);
- ``wordnet``: WordNet 3.0's quoted usage examples (``apt-get install wordnet-base``), ~48k sentences;
- ``fortunes``: the entries of Debian's ``fortunes`` package (``apt-get install fortunes``), whitespace
  joined, those of at most ``max_words`` words.

    python -m training.corpora stsb runs/stsb_train.txt
    python -m training.corpora stsb,wordnet,fortunes runs/sentences.txt

Each source is deduplicated (case-insensitively); the file has one sentence a line, the input of
``embedhub train simcse data=...``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from embedhub import DataFileError, DataNotFoundError
from embedhub.data import read_stsb

from .errors import DataError, MissingDataError

WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
_QUOTED = re.compile(r'"([^"]+)"')


def stsb_sentences(folder: Path | None = None, split: str = "train") -> Iterator[str]:
    """The sentences of an STS-B split (both columns), without the scores; ``folder`` (csv or the Hub copy's
    parquet files) defaults to where :func:`embedhub.data.stsb_dir` finds STS-B.

    >>> next(stsb_sentences())  # doctest: +SKIP
    'A plane is taking off.'
    """
    try:
        rows = read_stsb(split, folder=folder)
    except DataNotFoundError as exc:
        raise MissingDataError(str(exc)) from exc
    except DataFileError as exc:
        raise DataError(str(exc)) from exc
    for a, b, _ in rows:
        yield a
        yield b


def wordnet_examples(folder: Path = WORDNET) -> Iterator[str]:
    """WordNet's usage examples: the quoted sentences after `` | `` in ``data.{noun,verb,adj,adv}``.

    >>> next(wordnet_examples())  # doctest: +SKIP
    'it was a sizable chunk of the entity'
    """
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(folder) / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path} not found: apt-get install wordnet-base")
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:  # the license header, entries without a gloss
                    continue
                yield from _QUOTED.findall(line.split(" | ", 1)[1])


def fortunes(folder: Path = FORTUNES, max_words: int = 60) -> Iterator[str]:
    """The entries (split by lines holding only ``%``) of the fortune files, whitespace joined.

    >>> next(fortunes())  # doctest: +SKIP
    'A banker is a fellow who lends you his umbrella when the sun is shining ...'
    """
    files = sorted(p for p in Path(folder).glob("*") if p.is_file() and not p.suffix)
    if not files:
        raise DataError(f"{folder}: no fortune files: apt-get install fortunes")
    for path in files:
        entry: list[str] = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in [*f, "%\n"]:
                if line.strip() != "%":
                    entry.append(line)
                    continue
                text = " ".join(" ".join(entry).split())
                entry = []
                if text and len(text.split()) <= max_words:
                    yield text


SOURCES: dict[str, Callable[[], Iterable[str]]] = {"stsb": stsb_sentences, "wordnet": wordnet_examples,
                                                   "fortunes": fortunes}


def unique(sentences: Iterable[str]) -> Iterator[str]:
    """Whitespace-normalised, non-empty sentences, each once (case-insensitively), in their first order."""
    seen: set[str] = set()
    for s in sentences:
        s = " ".join(s.split())
        if s and s.lower() not in seen:
            seen.add(s.lower())
            yield s


def write_corpus(sources: list[str], out: str | Path) -> int:
    """Write the unique sentences of ``sources`` (names of :data:`SOURCES`) to ``out``, one a line.

    >>> write_corpus(["stsb"], "/tmp/stsb_train.txt")  # doctest: +SKIP
    10536
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise DataError(f"unknown sentence source(s) {unknown}; expected some of {sorted(SOURCES)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in unique(x for name in sources for x in SOURCES[name]()):
            f.write(s + "\n")
            n += 1
    tmp.replace(out)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.corpora", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", help=f"comma-separated, of: {', '.join(SOURCES)}")
    parser.add_argument("out", help="the sentence file to write (.txt)")
    args = parser.parse_args(argv)
    try:
        n = write_corpus(args.sources.split(","), args.out)
    except DataError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"{args.out}: {n} sentences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
