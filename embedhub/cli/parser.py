"""The ``embedhub`` argument parser: one sub-parser per command, plus the commands of installed plugins."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    pass
from embedhub.cli.commands import cmd_data, cmd_embed, cmd_encode, cmd_models, cmd_push, cmd_search, cmd_serve
from embedhub.cli.inputs import PRECISIONS, RESCORE_MULTIPLIER
from embedhub.cli.plugins import add_plugins


def _int_from(low: int, bound: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (``bound`` says so in the error).

    >>> _int_from(1, "at least 1")("3")
    3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return value

    return parse


_positive_int = _int_from(1, "at least 1")


def _positive_float(text: str) -> float:
    """An argparse ``type``: a finite number above 0.

    >>> _positive_float("0.5")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value
_column = _int_from(0, "0 or more (columns count from 0)")


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 0 to 65535.

    >>> _port("8080")
    8080
    """
    value = _int_from(0, "0 or more")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


_INPUT_HELP = (
    "inputs (the same for encode, search and embed): a .txt file (one text per line; empty lines are skipped), a "
    ".jsonl file (one JSON object per line; the --field value is embedded), a .tsv/.csv file (no header; --column "
    "N, 0-based; a .csv whose first line holds a tab is read as tab separated), a .parquet file (its --field "
    "column), a folder tree of images (jpg, jpeg, png, bmp, gif, webp, tif, tiff; sorted by path), webdataset "
    ".tar shards (<key>.<jpg|png|...> members), or a quoted glob of files of one kind; --field image means the "
    ".jsonl/.parquet values are image paths relative to the file's folder"
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="alias (see `embedhub models`), Hub repo id or local folder")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ... (default: auto)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="inputs per batch (default: 32)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx", "auto"),
        default=None,
        help="torch, onnx (the graphs of a folder written by `embedhub export`) or auto (onnx when the folder "
        "has graphs, else torch) (default: torch, or onnx for an export written without its torch copy)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads: ONNX Runtime intra-op threads, or torch's for the torch backend (default: all cores)",
    )


def _add_encode_args(p: argparse.ArgumentParser, *, precisions: tuple[str, ...] = PRECISIONS,
                     role: str | None = None) -> None:
    """``--no-normalize`` (without a search ``role``), ``--prompt-name``, ``--prompt``, ``--truncate-dim`` and
    ``--precision``: ``encode``'s options."""
    if role is None:
        p.add_argument("--no-normalize", action="store_true",
                       help="keep raw embeddings (default: what the model defines: L2-normalised for cosine models)")
    whose = f"the {role}" if role else "every input"
    default = " (default: its 'query' prompt, if any)" if role == "query" else " (default: the model's default prompt)"
    p.add_argument("--prompt-name", default=None, help=f"prompt of the model's config for {whose}{default}")
    p.add_argument("--prompt", default=None, help=f"prompt text put before {whose} (instead of --prompt-name)")
    p.add_argument("--truncate-dim", type=_positive_int, default=None,
                   help="keep the first N dimensions (Matryoshka models; default: the model's truncate_dim, else all)")
    p.add_argument("--precision", choices=precisions, default="float32",
                   help="output precision, as sentence-transformers' quantize_embeddings" + (
                       "; binary and ubinary search a binary index (Hamming distance)" if role else "")
                   + " (default: float32)")


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    """The corpus options, the same for every command that reads a corpus."""
    p.add_argument("--field", "--text-column", dest="field", default="text",
                   help="JSON field of .jsonl input, column of .parquet input (default: text)")
    p.add_argument("--column", type=_column, default=0, help="0-based column of .tsv/.csv input (default: 0)")


def _command(sub: Any, name: str, func: Callable[[argparse.Namespace], int], **texts: str) -> argparse.ArgumentParser:
    """The sub-parser of the command ``name`` (``texts``: its help, description and epilog), which runs ``func``."""
    p = sub.add_parser(name, **texts)
    p.set_defaults(func=func)
    return p


def _add_io_args(p: argparse.ArgumentParser, inputs: str, output: str) -> None:
    """The model's options (:func:`_add_model_args`), then ``--input`` and ``--output`` (their help texts)."""
    _add_model_args(p)
    p.add_argument("--input", required=True, help=inputs)
    p.add_argument("--output", required=True, help=output)


def build_parser() -> argparse.ArgumentParser:
    """The ``embedhub`` argument parser."""
    from embedhub._version import __version__

    parser = argparse.ArgumentParser(
        prog="embedhub",
        description="Embed text and images with embedhub models.",
        epilog="Exit codes: 0 ok, 1 model/library error, 2 bad arguments or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"embedhub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    enc = _command(
        sub, "encode", cmd_encode,
        help="embed a file or folder of inputs into .npy or .parquet",
        description="Embed inputs and write them as .npy (float32 N x D) or .parquet (id, input, embedding).",
        epilog=_INPUT_HELP + ".",
    )
    _add_io_args(enc, "input file, folder or glob (see below)", "output .npy or .parquet file (written atomically)")
    _add_reader_args(enc)
    _add_encode_args(enc)

    emb = _command(
        sub, "embed", cmd_embed,
        help="embed a large corpus into resumable parquet shards (locally or on Ray)",
        description="Embed a corpus into OUTPUT/shards/part-NNNNN.parquet (id, embedding; fingerprint in the "
        "metadata) with a manifest of finished shards: run the same command again after an interruption and it "
        "goes on where it stopped, never writing a row twice. Rows that cannot be embedded are skipped and listed "
        "in OUTPUT/errors.jsonl.",
        epilog=_INPUT_HELP + "; ids: the --id-column of .jsonl/.parquet input, else row numbers (a folder's "
        "images: their relative paths, tar shards: their sample keys).",
    )
    _add_io_args(emb, "corpus file, folder or glob (see below)",
                 "output folder (new, empty, or of an earlier run to resume)")
    emb.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local (this process) or ray (Ray Data; pip install 'embedhub[ray]') (default: local)")
    emb.add_argument("--address", default=None,
                     help="Ray cluster address, or 'auto' for the cluster `ray start` runs on this machine "
                     "(default: RAY_ADDRESS, else a new Ray instance on this machine)")
    for flag, text in (("--actors", "Ray model replicas (default: one per GPU, else 1)"),
                       ("--workers", "local engine: image decoding processes (default: cores - 1, at most 8)"),
                       ("--max-tokens", "at most this many padded tokens per text batch (default: no limit)"),
                       ("--shard-rows", "rows per output shard (default: 10000 texts, 1000 images)")):
        emb.add_argument(flag, type=_positive_int, default=None, help=text)
    _add_reader_args(emb)
    emb.add_argument("--id-column", default=None, help="id column or JSON field (default: row numbers)")
    emb.add_argument("--index", choices=("faiss",), default=None, help="also build a faiss index (index.faiss)")
    emb.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                     help="a row that cannot be embedded: skip it and list it in errors.jsonl, or stop (default: skip)")
    emb.add_argument("--restart", action="store_true",
                     help="delete the output folder's earlier shards (another model or input) and start over")
    _add_encode_args(emb, precisions=("float32", "binary", "ubinary"))  # int8 ranges would differ per window

    sea = _command(
        sub, "search", cmd_search,
        help="find the corpus texts most similar to queries",
        description="Embed a text corpus (or load its --embeddings) and print the --top-k most "
        "similar texts for each --query with their scores: the model's similarity (cosine, dot, euclidean or "
        "manhattan, from its config), or the Hamming distance of a binary index for --precision binary/ubinary "
        "(optionally rescored with the float query). Queries get the model's query prompt, the corpus its "
        "document prompt.",
        epilog=_INPUT_HELP + " (search: text corpora only).",
    )
    _add_model_args(sea)
    sea.add_argument("--corpus", required=True, help="text corpus file, folder or glob (see below)")
    _add_reader_args(sea)
    sea.add_argument("--query", action="append", required=True, help="query text; repeat for several")
    sea.add_argument("--top-k", type=_positive_int, default=5, help="hits per query (default: 5)")
    sea.add_argument(
        "--embeddings",
        default=None,
        help="precomputed corpus embeddings, so the corpus is not embedded again on every search: a .parquet "
        "(each row's text is checked against --corpus) or .npy file (its row count only) written by "
        "`embedhub encode --model M --input CORPUS --output FILE` with the same corpus options (and the prompt "
        "search puts before the corpus: --prompt-name document for a model with a document prompt); refused unless "
        "its fingerprint (parquet metadata, or the .fingerprint.json beside a .npy) is --model's, normalisation aside",
    )
    _add_encode_args(sea, precisions=("float32", "binary", "ubinary"), role="query")
    sea.add_argument("--document-prompt-name", default=None,
                     help="prompt of the model's config for the corpus (default: its 'document' prompt, if any)")
    sea.add_argument("--document-prompt", default=None, help="prompt text put before every corpus text")
    sea.add_argument("--rescore-multiplier", type=_positive_int, default=None,
                     help="binary precisions: rescore this many times --top-k candidates by Hamming distance with "
                     f"the float query (default: {RESCORE_MULTIPLIER}; 1 keeps the Hamming ranking)")

    srv = _command(
        sub, "serve", cmd_serve,
        help="serve models over HTTP with OpenAI's embeddings API (texts and images)",
        description="An OpenAI-compatible embedding server: POST /v1/embeddings (texts, token ids of the model's own "
        "tokenizer, images as data URIs with \"modality\": \"image\"), POST /v1/zero-shot, GET /v1/models, "
        "/health and /metrics (Prometheus). The inputs of concurrent requests share model batches; a full queue "
        "answers 429 at once. SIGTERM stops taking connections, answers the requests in flight, then exits. "
        "Needs pip install 'embedhub[serve]' (and 'embedhub[ray]' for --engine ray).",
        epilog="Examples: embedhub serve --model all-MiniLM-L6-v2; embedhub serve --model minilm=./my-folder "
        "--model clip=./clip-folder --port 8080 --api-key $KEY",
    )
    srv.add_argument("--model", action="append", required=True,
                     help="model to serve: NAME (alias, Hub repo id or folder; served under that name) or "
                     "SERVED=NAME; repeat to serve several")
    srv.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    srv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ... (default: auto)")
    srv.add_argument("--backend", choices=("torch", "onnx", "auto"), default=None,
                     help="torch, onnx or auto, as for encode (default: torch)")
    srv.add_argument("--threads", type=_positive_int, default=None,
                     help="CPU threads of the model (torch intra-op, or ONNX Runtime) (default: all cores)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8080, help="port, 0-65535 (0: any free port) (default: 8080)")
    srv.add_argument("--max-connections", type=_positive_int, default=1024,
                     help="connections and requests served at once; beyond, new ones get 503 (default: 1024)")
    srv.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' (default: $EMBEDHUB_API_KEY; none: open)")
    srv.add_argument("--auth-all", action="store_true", help="/health and /metrics need the key too")
    for flag, default, text in (
            ("--max-batch-size", 256, "inputs per model batch"),
            ("--max-queue", 4096, "inputs waiting per model; beyond, requests get 429"),
            ("--max-client-batch", 2048, "inputs per request"),
            ("--workers-tokenize", 2, "threads tokenising texts and decoding images"),
            ("--max-body-bytes", 8 << 20, "bytes per request body"),
            ("--max-text-chars", 200_000, "characters per text"),
            ("--max-image-bytes", 10 << 20, "bytes per image"),
            ("--max-image-pixels", 40_000_000, "pixels per decoded image")):
        srv.add_argument(flag, type=_positive_int, default=default, help=f"{text} (default: {default})")
    srv.add_argument("--max-batch-tokens", type=_positive_int, default=None,
                     help="padded tokens per model batch (default: 4096 on a CPU, 16384 on an accelerator)")
    srv.add_argument("--max-queue-wait", type=_positive_float, default=2.0,
                     help="seconds of model work that may wait per model (estimated from the measured rate); beyond, "
                     "requests get 429, so accepted requests keep a bounded latency under overload: set it to your "
                     "latency budget (default: 2)")
    srv.add_argument("--graceful-timeout", type=_positive_float, default=30.0,
                     help="seconds SIGTERM waits for the requests in flight before cutting them off (default: 30)")
    srv.add_argument("--allow-image-urls", action="store_true",
                     help="also fetch http(s) image URLs (bounded by --max-image-bytes, 10 s); off by default: a "
                     "server that fetches URLs can be made to reach hosts only it can reach")
    srv.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local (this process, uvicorn) or ray (Ray Serve replicas) (default: local)")
    srv.add_argument("--replicas", type=_positive_int, default=1, help="--engine ray: copies of the server")
    srv.add_argument("--address", default=None, help="--engine ray: Ray cluster address (default: a local instance)")

    _command(
        sub, "models", cmd_models,
        help="list the registered model aliases",
        description="List the registered aliases with the Hub repo and pinned revision each loads "
        "('-': the repo's default branch).",
    )

    dat = _command(
        sub, "data", cmd_data,
        help="find or download the data the tests and recipes use (STS-B)",
        description="Find STS-B ($EMBEDHUB_STSB_DIR, shared/data/stsbenchmark beside the checkout, or the Hugging "
        "Face cache) or, when it is on none of them, download the dataset sentence-transformers/stsb from the Hub "
        "into the Hugging Face cache (once); check its three splits and print the folder and their row counts.",
        epilog="Exit codes: 0 found (or downloaded), 1 not found and not downloadable (offline), or a malformed file.",
    )
    dat.add_argument("dataset", choices=("stsb",), help="the dataset: stsb (the STS Benchmark)")
    dat.add_argument("--print", dest="print_only", action="store_true",
                     help="only print the folder it is found in (exit 1 when it is nowhere); never download")

    push = _command(
        sub, "push", cmd_push,
        help="upload a saved model folder to the Hugging Face Hub",
        description="Upload the files a model folder's format needs (plus its README.md model card and the "
        "images it links) to a Hub repo in one commit, creating the repo when missing. The repo id, revision, "
        "folder and token are checked before anything is sent. Prints the commit URL.",
        epilog="Exit codes: 0 pushed, 2 bad arguments, not a model folder, no token or the Hub refused the push.",
    )
    push.add_argument("folder", metavar="DIR", help="model folder (e.g. written by save_pretrained or a recipe)")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub repo id, 'namespace/name'")
    push.add_argument("--private", action="store_true", help="create the repo as private (when it does not exist)")
    push.add_argument("--revision", default=None, help="branch to push to (created when missing; default: main)")
    push.add_argument("--commit-message", default=None, help="commit message (default: 'Upload embedhub model')")
    push.add_argument(
        "--token",
        default=None,
        help="Hub token with write access (default: HF_TOKEN or the saved login; a token on the command line "
        "is visible to other users of this machine)",
    )
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    add_plugins(sub)
    return parser
