"""The commands of the ``embedhub`` command line (``encode``, ``embed``, ``search``, ``models``, ``data``, ``push``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub.jobs.corpus import count as _count
from embedhub.jobs.corpus import text_problem

if TYPE_CHECKING:
    import numpy as np

    from embedhub.model import EmbeddingModel
    from embedhub.store.embeddings import StoredEmbeddings
from embedhub.cli.inputs import OUTPUT_EXTENSIONS, RESCORE_MULTIPLIER, Corpus, UsageError, read_inputs


def _load_model(args: argparse.Namespace) -> EmbeddingModel:
    """``embedhub.load`` with the command's ``--model``, ``--revision``, ``--device``, ``--backend``, ``--threads``."""
    from embedhub.errors import EmbedhubError
    from embedhub.loader import load

    start = time.perf_counter()
    try:
        model = load(args.model, revision=args.revision, device=args.device, backend=args.backend, threads=args.threads)
    except EmbedhubError as exc:
        if args.backend != "onnx" and "backend='onnx'" in str(exc):  # the library's hint, in command-line terms
            raise type(exc)(f"{exc} (on the command line: --backend onnx)") from exc
        raise
    if args.threads and model.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    threads = f", {_count(args.threads, 'thread')}" if args.threads else ""
    print(
        f"embedhub: loaded {args.model} ({model.format}, {'+'.join(model.modalities)}, {model.embed_dim} dims, "
        f"{model.backend} backend{threads}) in {time.perf_counter() - start:.2f} s",
        file=sys.stderr,
    )
    return model


def _options(args: argparse.Namespace, *, role: str | None = None) -> dict[str, Any]:
    """``encode``'s keywords from the command's ``--no-normalize``, ``--prompt-name``, ``--prompt``,
    ``--truncate-dim`` and ``--precision`` (``role="document"``: the ``--document-prompt*`` pair of search)."""
    prefix = "document_" if role == "document" else ""
    return {"normalize": False if getattr(args, "no_normalize", False) else None,
            "prompt_name": getattr(args, f"{prefix}prompt_name", None),
            "prompt": getattr(args, f"{prefix}prompt", None),
            "truncate_dim": args.truncate_dim, "precision": getattr(args, "precision", "float32")}


def _encode(model: EmbeddingModel, corpus: Corpus, *, batch_size: int, options: dict[str, Any] | None = None,
            role: str | None = None) -> np.ndarray:
    """Encode with a progress bar (``role="document"``: ``encode_document``); an item error is raised again
    naming where item i came from."""
    from embedhub.errors import ItemError
    from embedhub.jobs.embed import encode_options

    encode = model.encode_document if role == "document" else model.encode
    try:
        return encode(corpus.items, batch_size=batch_size, show_progress_bar=True, **encode_options(options or {}))
    except ItemError as exc:
        i = exc.index
        if i is None or not 0 <= i < len(corpus.origins):
            raise
        where = "" if corpus.origins[i] in exc.detail else f" ({corpus.origins[i]})"
        raise type(exc)(f"item {i}{where}: {exc.detail}", index=i) from exc


def cmd_encode(args: argparse.Namespace) -> int:
    """``embedhub encode``: inputs -> ``.npy`` or ``.parquet``."""
    out = Path(args.output)
    ext = out.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"{out}: unknown output extension {ext or '(none)'!r}; expected .npy or .parquet")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; --output must be a file path")
    from embedhub.store.embeddings import utf8_path_problem

    if utf8_path_problem(out, "--output"):
        raise UsageError(utf8_path_problem(out, "--output"))
    if ext == ".parquet":
        from embedhub.errors import require

        require("pyarrow", "parquet", "writing .parquet output")
    corpus = read_inputs(args, args.input)
    print(f"embedhub: {corpus.summary()}", file=sys.stderr)
    model = _load_model(args)
    from embedhub.store.embeddings import sidecar_path, write_embeddings

    start = time.perf_counter()
    from embedhub.store.embeddings import encode_fingerprint

    options = _options(args)
    fingerprint = encode_fingerprint(model, **options)  # the options are checked before any work
    emb = _encode(model, corpus, batch_size=args.batch_size, options=options)
    seconds = time.perf_counter() - start
    if ext == ".npy":
        write_embeddings(out, emb, fingerprint)
        where = f"{out} (fingerprint {fingerprint.id} in {sidecar_path(out).name})"
    else:
        write_embeddings(out, emb, fingerprint, inputs=corpus.labels)
        where = f"{out} (fingerprint {fingerprint.id})"
    kind = "texts" if corpus.is_text else "items"
    print(
        f"embedhub: encoded {emb.shape[0]} {kind} into {emb.shape[1]} dims in {seconds:.2f} s "
        f"({emb.shape[0] / max(seconds, 1e-9):.1f}/s) -> {where}",
        file=sys.stderr,
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """``embedhub embed``: a corpus -> parquet shards + manifest (+ faiss index), resumable."""
    from embedhub.errors import CorpusError, JobError
    from embedhub.jobs.embed import embed_corpus

    try:
        result = embed_corpus(
            args.model, args.input, args.output, engine=args.engine, address=args.address, backend=args.backend,
            device=args.device, revision=args.revision, threads=args.threads, batch_size=args.batch_size,
            max_tokens=args.max_tokens, shard_rows=args.shard_rows, text_column=args.field, column=args.column,
            id_column=args.id_column, index=args.index, on_error=args.on_error, **_options(args),
            restart=args.restart, workers=args.workers, actors=args.actors,
        )
    except (CorpusError, JobError) as exc:
        raise UsageError(str(exc)) from None
    resumed = f", {result.resumed} of them done by an earlier run" if result.resumed else ""
    extra = f"; {result.errors} rows skipped (see {result.errors_file})" if result.errors else ""
    index = f"; index {result.index}" if result.index else ""
    print(f"embedhub: {result.rows} rows in {result.shards} shards{resumed} -> {result.output} "
          f"(fingerprint {result.fingerprint.id}) in {result.seconds:.1f} s{extra}{index}", file=sys.stderr)
    return 0


def _read_stored(args: argparse.Namespace, corpus: Corpus) -> StoredEmbeddings:
    """``search --embeddings``: the file's vectors, checked against the corpus before the model loads.

    A file must carry provenance (parquet metadata, or the ``.fingerprint.json`` beside a ``.npy``):
    vectors that cannot be traced to a model are refused, since the point of the check is that an
    index is never searched with another model's queries.
    """
    from embedhub.errors import EmbeddingsFileError, JobError, ProvenanceError
    from embedhub.store.embeddings import sidecar_path
    from embedhub.store.read import read_embeddings

    path = Path(args.embeddings)
    try:
        stored = read_embeddings(path)
    except (EmbeddingsFileError, ProvenanceError, JobError) as exc:
        raise UsageError(f"--embeddings: {exc}") from None
    rows = len(stored)
    if rows != len(corpus.items):
        raise UsageError(
            f"--embeddings {path} has {rows} rows but the corpus {args.corpus} has "
            f"{len(corpus.items)} items; re-run `embedhub encode` with the same corpus options"
        )
    if stored.inputs is not None and stored.inputs != corpus.labels:
        i = next(i for i, (a, b) in enumerate(zip(stored.inputs, corpus.labels)) if a != b)
        raise UsageError(
            f"--embeddings {path} row {i} embeds {stored.inputs[i]!r:.80} but item {i} of the corpus "
            f"({corpus.origins[i]}) is {corpus.labels[i]!r:.80}; re-run `embedhub encode` with the same corpus options"
        )
    if stored.inputs is None:  # a .npy records no inputs: say how little of the corpus could be checked
        print(f"embedhub: note: --embeddings {path} records no inputs, so only its row count is checked against "
              f"{args.corpus}; `embedhub encode --output FILE.parquet` records each row's text, checked here",
              file=sys.stderr)
    if stored.fingerprint is None:
        beside = f"no {sidecar_path(path).name} beside it" if path.suffix.lower() == ".npy" else "no embedhub metadata"
        raise UsageError(
            f"--embeddings {path} has no provenance ({beside}), so embedhub cannot check that {args.model} made "
            f"it; re-run `embedhub encode --model {args.model} --output {path}` (or, knowing the model that made "
            "the vectors, write them with embedhub.write_embeddings(path, vectors, model.fingerprint))"
        )
    return stored


def _check_stored(args: argparse.Namespace, stored: StoredEmbeddings, model: EmbeddingModel) -> None:
    """The stored vectors' fingerprint against what ``--model`` with the command's document options makes
    (truncation and precision included; normalisation is the file's, and the queries follow it)."""
    from embedhub.errors import FingerprintMismatchError
    from embedhub.store.embeddings import encode_fingerprint

    options = dict(_options(args, role="document"), normalize=stored.fingerprint.normalized)
    expected = encode_fingerprint(model, **options)
    try:
        expected.check(stored.fingerprint, what=f"--embeddings {args.embeddings}", expected=f"--model {args.model}",
                       found="file")
    except FingerprintMismatchError as exc:
        raise UsageError(
            f"{exc}. Re-run `embedhub encode` with this model and its options (--truncate-dim, --precision) to "
            "search with it, or pass the options the file was made with"
        ) from None
    if options["prompt_name"] is None and options["prompt"] is None:  # search's corpus prompt: encode_document's
        from embedhub.model import DOCUMENT_PROMPT_NAMES

        options["prompt_name"] = next((n for n in DOCUMENT_PROMPT_NAMES if n in model.prompts), None)
    want = encode_fingerprint(model, **options).role
    if _prompt_key(model, stored.fingerprint.role) != _prompt_key(model, want):
        cmd = f"embedhub encode --model {args.model}" + (
            "" if not want else f" --prompt-name {want}" if not want.startswith("prompt:") else " --prompt TEXT")
        raise UsageError(
            f"--embeddings {args.embeddings} was encoded with prompt {stored.fingerprint.role or '(none)'} but search "
            f"puts prompt {want or '(none)'} before every corpus text; re-run `{cmd} ...` (as search encodes its "
            "corpus), or pass the --document-prompt-name / --document-prompt the file was made with"
        )


#: corpus rows ``search --embeddings`` embeds again and compares with the stored ones
SPOT_CHECK_ROWS = 8


def _spot_check(args: argparse.Namespace, stored: StoredEmbeddings, model: EmbeddingModel, corpus: Corpus,
                options: dict[str, Any]) -> None:
    """Embed a few corpus rows again (the first, the last and evenly spaced ones between) and compare them with the
    stored rows: a file of another corpus with the same row count (a ``.npy`` records no texts) or with rows out of
    place is refused naming the first row that differs, where it would otherwise give wrong hits."""
    import numpy as np

    from embedhub.jobs.embed import encode_options

    n = len(corpus.items)
    rows = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(SPOT_CHECK_ROWS, n))})
    got = model.encode_document([corpus.items[i] for i in rows], batch_size=args.batch_size,
                                show_progress_bar=False, **encode_options(options))
    want = np.asarray(stored.embeddings[rows])
    for k, i in enumerate(rows):
        a, b = np.asarray(got[k]), want[k]
        if a.dtype == np.uint8 or a.dtype == np.int8:  # packed bits (binary / ubinary): the share of equal bits
            same = float((np.unpackbits(a.view(np.uint8)) == np.unpackbits(b.view(np.uint8))).mean())
            ok = same >= 0.98
        else:
            a, b = a.astype(np.float64), b.astype(np.float64)
            same = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            ok = same >= 0.999
        if not ok:
            raise UsageError(
                f"--embeddings {args.embeddings} row {i} is not the embedding of item {i} of the corpus "
                f"({corpus.origins[i]}: {corpus.labels[i]!r:.80}) that --model {args.model} makes (agreement "
                f"{same:.4f}): the file was made from another corpus or its rows moved; re-run `embedhub encode` "
                "with this corpus")


def _prompt_key(model: EmbeddingModel, role: str | None) -> str:
    """What a fingerprint's prompt role puts before each text, comparable across roles: ``""`` (no prompt
    or an empty one), else ``prompt:<16 hex>`` of the text (a prompt name resolved through the model's prompts)."""
    import hashlib

    empty = "prompt:" + hashlib.sha256(b"").hexdigest()[:16]  # a literal empty prompt: none
    if role is None or role.startswith("prompt:"):
        return "" if role in (None, empty) else role
    text = (getattr(model, "prompts", None) or {}).get(role)
    if text is None:
        return f"name:{role}"  # a name this model does not have: never equal to one it does
    return "prompt:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16] if text else ""


def _score_name(similarity: str, precision: str, rescore: int | None) -> str:
    """What the printed scores are."""
    if precision in ("binary", "ubinary"):
        return ("dot product of the float query with the binary document bits (rescored top "
                f"{rescore}x candidates by Hamming distance)" if rescore else "minus the Hamming distance")
    return {"cosine": "cosine similarity", "dot": "dot product", "euclidean": "minus the euclidean distance",
            "manhattan": "minus the manhattan distance"}[similarity]


def cmd_search(args: argparse.Namespace) -> int:
    """``embedhub search``: print the ``--top-k`` corpus texts most similar to each ``--query``.

    Queries are encoded with ``encode_query`` (the model's query prompt, or ``--prompt-name`` / ``--prompt``),
    the corpus with ``encode_document``; the ranking is the model's similarity (``model.similarity_fn_name``),
    or, with ``--precision binary``/``ubinary``, the Hamming distance of a binary index with optional float
    rescoring of the ``--rescore-multiplier`` x ``--top-k`` nearest.
    """
    from embedhub.jobs.embed import encode_options, similarity_of
    from embedhub.store.embeddings import encode_fingerprint
    from embedhub.store.index import VectorIndex

    corpus = read_inputs(args, args.corpus)
    if not corpus.is_text:
        raise UsageError(f"{args.corpus}: search needs a text corpus (.txt, .jsonl, .tsv, .csv, .parquet), not "
                         f"images ({corpus.summary()})")
    for i, query in enumerate(args.query, start=1):
        which = f"--query {i} of {len(args.query)}" if len(args.query) > 1 else "--query"
        if not query.strip():
            raise UsageError(f"{which} must not be empty")
        problem = text_problem(query)
        if problem:
            raise UsageError(f"{which} ({query!r:.80}) is not valid text: {problem}")
    print(f"embedhub: {corpus.summary()}", file=sys.stderr)
    stored = _read_stored(args, corpus) if args.embeddings else None
    model = _load_model(args)
    if stored is not None:
        _check_stored(args, stored, model)
    docs_options = _options(args, role="document")
    if stored is not None:
        docs_options["normalize"] = stored.fingerprint.normalized
        _spot_check(args, stored, model, corpus, docs_options)
    # queries: float vectors of the same width and normalisation (binary indexes quantise them, and rescore)
    query_options = dict(_options(args), normalize=docs_options["normalize"], precision="float32")
    start = time.perf_counter()
    docs = stored.embeddings if stored is not None else _encode(model, corpus, batch_size=args.batch_size,
                                                                options=docs_options, role="document")
    queries = model.encode_query(list(args.query), batch_size=args.batch_size, show_progress_bar=False,
                                 **encode_options(query_options))
    similarity, precision = similarity_of(model), args.precision
    if precision not in ("binary", "ubinary"):
        if args.rescore_multiplier is not None:
            raise UsageError(f"--rescore-multiplier rescores the candidates of a binary index; --precision is "
                             f"{precision}, whose index ranks exactly (use --precision binary or ubinary)")
        rescore = None
    else:
        rescore = RESCORE_MULTIPLIER if args.rescore_multiplier is None else args.rescore_multiplier
    index = VectorIndex.build(docs, stored.fingerprint if stored is not None else encode_fingerprint(
        model, **docs_options), similarity=similarity)
    scores, rows = index.search(queries, args.top_k, rescore_multiplier=rescore)
    print(f"embedhub: {index.kind} index; scores: {_score_name(similarity, precision, rescore)}", file=sys.stderr)
    for qi, query in enumerate(args.query):
        if qi:
            print()
        print(f"query: {query}")
        for score, j in zip(scores[qi], rows[qi]):
            print(f"  {score:.4f}  {corpus.labels[j]}")
    print(
        f"embedhub: searched {_count(len(corpus.items), 'text')} for {len(args.query)} "
        f"{'query' if len(args.query) == 1 else 'queries'} in {time.perf_counter() - start:.2f} s"
        + (f" (corpus vectors from {args.embeddings})" if stored is not None else ""),
        file=sys.stderr,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``embedhub models``: the registered aliases, one a line: alias, Hub repo id, pinned revision
    (``-`` when the alias follows the repo's default branch) and description, in aligned columns."""
    from embedhub.hub.aliases import get_entry, list_models

    rows = [("ALIAS", "REPO ID", "REVISION", "DESCRIPTION")]
    for item in list_models():
        alias = getattr(item, "alias", item)
        entry = get_entry(alias) if isinstance(item, str) else item
        rows.append((alias, entry.repo_id, entry.revision or "-", entry.description))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``embedhub data stsb``: where STS-B is found, downloading it into the Hugging Face cache when it is on none of
    the places looked in; prints the folder and the rows of each split. ``--print`` only says where it is (exit 1
    when nowhere)."""
    from embedhub.data import ENV_VAR, SPLITS, download_stsb, read_stsb, stsb_dir
    from embedhub.errors import DataNotFoundError

    try:
        folder = stsb_dir()
    except DataNotFoundError as exc:
        if args.print_only or os.environ.get(ENV_VAR, "").strip():
            print(f"embedhub data: {exc}", file=sys.stderr)
            return 1
        folder = download_stsb()
    if args.print_only:
        print(folder)
        return 0
    counts = {split: len(read_stsb(split)) for split in SPLITS}  # the found copy: whole splits only
    print(folder)
    print("STS-B rows: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``embedhub push DIR REPO_ID``: upload a saved model folder (its format's files and model card)."""
    from embedhub.errors import PublishError
    from embedhub.hub.publish import push_folder

    start = time.perf_counter()
    try:
        url = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            create_pr=args.create_pr,
        )
    except PublishError as exc:
        raise UsageError(str(exc)) from None
    where = args.repo_id + (f"@{args.revision}" if args.revision else "")
    print(url)
    print(f"embedhub: pushed {args.folder} to {where} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- parser


def cmd_serve(args: argparse.Namespace) -> int:
    """``embedhub serve``: the OpenAI-compatible server until SIGTERM / Ctrl-C."""
    from embedhub.errors import ArgumentError
    from embedhub.serve.app import Limits
    from embedhub.serve.run import parse_model_args, serve

    try:
        models = parse_model_args(args.model)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None
    api_key = args.api_key if args.api_key is not None else os.environ.get("EMBEDHUB_API_KEY") or None
    if args.auth_all and not api_key:
        raise UsageError("--auth-all needs an API key (--api-key or $EMBEDHUB_API_KEY)")
    if args.engine == "local" and (args.replicas != 1 or args.address):
        raise UsageError("--replicas and --address are options of --engine ray")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_items=args.max_client_batch,
                    max_text_chars=args.max_text_chars, max_image_bytes=args.max_image_bytes,
                    max_image_pixels=args.max_image_pixels, allow_image_urls=args.allow_image_urls)
    load_options: dict[str, Any] = {"revision": args.revision, "device": args.device}
    if args.backend is not None:
        load_options["backend"] = args.backend
    serve(models, host=args.host, port=args.port, engine=args.engine, replicas=args.replicas, address=args.address,
          threads=args.threads, graceful_seconds=args.graceful_timeout, api_key=api_key, auth_all=args.auth_all,
          limits=limits, max_connections=args.max_connections,
          max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
          max_queue_wait=args.max_queue_wait,
          workers_tokenize=args.workers_tokenize, load_options=load_options)
    return 0
