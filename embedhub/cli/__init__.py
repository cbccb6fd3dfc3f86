"""The ``embedhub`` command line: ``encode`` files to embeddings, ``embed`` a large corpus into resumable
shards, ``search`` a corpus, list ``models``, get ``data`` (STS-B), ``push`` a model folder to the Hub.

Examples::

    embedhub encode --model all-MiniLM-L6-v2 --input sentences.txt --output emb.npy
    embedhub embed --model all-MiniLM-L6-v2 --input 'passages/*.parquet' --output emb/ --index faiss
    embedhub search --model all-MiniLM-L6-v2 --corpus sts-test.csv --column 5 --query "A man is playing a guitar."
    embedhub encode --model all-MiniLM-L6-v2 --input corpus.txt --output corpus.parquet   # once
    embedhub search --model all-MiniLM-L6-v2 --corpus corpus.txt --embeddings corpus.parquet --query "..."
    embedhub models
    embedhub data stsb
    embedhub push my-model acme/my-model --private

Exit codes: 0 success, 1 the model or the library failed (message on stderr), 2 bad usage or bad input.
Heavy imports (torch, numpy, pyarrow) happen inside the commands.
"""

from __future__ import annotations

import os
import sys

from embedhub.cli.inputs import UsageError
from embedhub.cli.parser import build_parser

__all__ = ["UsageError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the ``embedhub`` command line; returns the exit code (0 ok, 1 library error, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"embedhub {args.command}"
    from embedhub.errors import EmbedhubError

    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (EmbedhubError, ValueError, TypeError, OSError, RuntimeError) as exc:
        if os.environ.get("EMBEDHUB_TRACEBACK"):
            raise
        print(f"{prog}: error: {exc} [{type(exc).__name__}; set EMBEDHUB_TRACEBACK=1 for details]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
