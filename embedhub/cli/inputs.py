"""The command line's inputs: the corpus options of ``encode``, ``search`` and ``embed`` handed to the one corpus
reader (:mod:`embedhub.jobs.corpus`), and the constants the parser shows without importing numpy."""

from __future__ import annotations

import argparse

from embedhub.errors import CorpusError
from embedhub.jobs.corpus import Corpus, read_corpus

#: encode's output precisions (as embedhub.store.index.PRECISIONS, without importing numpy for --help)
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
RESCORE_MULTIPLIER = 4
OUTPUT_EXTENSIONS = (".npy", ".parquet")


class UsageError(Exception):
    """Bad arguments or bad input data: reported on stderr, exit code 2."""


def read_inputs(args: argparse.Namespace, spec: str) -> Corpus:
    """The whole corpus ``spec`` (``--input`` or ``--corpus``) with the command's ``--field``/``--text-column``
    and ``--column``; input that cannot be read is a :class:`UsageError` naming the file and line."""
    try:
        return read_corpus(spec, text_column=args.field, column=args.column)
    except CorpusError as exc:
        raise UsageError(str(exc)) from None
