"""The plain serving peer: a FastAPI app whose one ``POST /v1/embeddings`` route calls sentence-transformers'
``encode`` on each request's texts, run under uvicorn.

This is the endpoint people write by hand: no batching across requests, no queue bound. The route is a plain
``def``, so FastAPI runs each request's ``encode`` in its thread pool, as its documentation advises for blocking
calls. It answers the OpenAI embeddings shape for string inputs only (``usage`` is not counted: zeros), refuses
anything else with a 4xx in OpenAI's error shape, and has ``GET /health`` for the load generator.

Run (``benchmarks/serve_load.py`` starts it the same way)::

    python benchmarks/st_server.py --model <folder> --name all-MiniLM-L6-v2 --port 8091 --threads 2
    curl -s localhost:8091/v1/embeddings -H 'content-type: application/json' \\
        -d '{"model": "all-MiniLM-L6-v2", "input": "A man is playing a flute."}'

The module does not use ``from __future__ import annotations``: FastAPI reads the route's annotations at run time,
and the request model is local to :func:`create_app`.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

MAX_ITEMS = 2048  # OpenAI's limit on inputs per request
MAX_CHARS = 100_000  # per text: far above what a 256-token model reads


def create_app(folder: Path, name: str, threads: int) -> Any:
    """The FastAPI app serving the sentence-transformers model in ``folder`` under ``name``.

    >>> app = create_app(Path("all-MiniLM-L6-v2-folder"), "all-MiniLM-L6-v2", 2)  # doctest: +SKIP
    """
    import torch
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)

    Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CHARS)]

    class EmbeddingRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        input: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)]
        encoding_format: Literal["float"] = "float"

    def error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
        return JSONResponse(body, status_code=status)

    app = FastAPI(title="sentence-transformers per request")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        return error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", where, "invalid_value")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(req: EmbeddingRequest) -> dict[str, Any] | JSONResponse:
        if req.model != name:
            return error(404, f"model {req.model!r} is not served here; this server serves {name!r}", "model",
                         "model_not_found")  # fmt: skip
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        data = [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a sentence-transformers folder")
    p.add_argument("--name", default=None, help="the served model name (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    args = p.parse_args(argv)
    if not (args.model / "modules.json").is_file():
        p.error(f"--model {args.model}: expected a sentence-transformers folder (with modules.json)")
    if args.threads < 1 or not 0 < args.port < 65536:
        p.error("--threads must be >= 1 and --port in 1..65535")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import uvicorn

    app = create_app(args.model, args.name or args.model.name, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
