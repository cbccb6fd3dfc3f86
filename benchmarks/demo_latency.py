"""Latency of the two demos, measured as a user's browser sees it: requests through the running app.

    python benchmarks/demo_latency.py [--requests 30] [--gallery 10000] [--threads 2]

1. zero-shot: one uploaded image (a 512x512 photo), 10 labels, 3 templates, through the app's
   ``/classify`` endpoint with ``gradio_client`` (HTTP, queue, upload included), after warm-up (the
   label set's embeddings are cached after the first request). Target: median < 150 ms.
2. retrieval: a text query over a gallery of ``--gallery`` indexed images (Fashion-MNIST test
   images; the index is built first, and its build time is printed), through
   ``/search_images_by_text``, top 10: the answer (ranks, scores, the thumbnails' URLs), not the
   thumbnails' own download, which the browser does after. Target: median < 100 ms.

Both apps run on the offline default models, on CPU with ``--threads`` torch threads. The script
prints the load average at start: timings on a busy machine are not trustworthy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

LABELS = "t-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot"
TEMPLATES = "a photo of a {}.\na black and white photo of a {}.\na low resolution photo of a {}."
QUERIES = ["a photo of a trouser.", "an ankle boot", "a handbag", "a dress", "a winter coat", "a sandal"]


def _times(call, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _row(name: str, ms: list[float], target: float) -> str:
    med = statistics.median(ms)
    p90 = sorted(ms)[int(0.9 * (len(ms) - 1))]
    verdict = "meets" if med < target else "MISSES"
    return f"{name:<42} {med:8.1f} {p90:8.1f} {min(ms):8.1f}   < {target:.0f} ms: {verdict}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30, help="timed requests per measurement (default 30)")
    ap.add_argument("--gallery", type=int, default=10_000, help="indexed images for the retrieval query")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = ap.parse_args(argv)

    import torch
    from gradio_client import Client, handle_file
    from skimage import data

    torch.set_num_threads(args.threads)
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"torch threads {args.threads}; {args.requests} timed requests each")
    if os.getloadavg()[0] > 0.5:
        print("WARNING: the machine is busy: the timings below are not trustworthy", file=sys.stderr)

    from embedhub.demos.retrieval import app as retrieval
    from embedhub.demos.zero_shot import app as zero_shot

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        photo = Path(tmp) / "chelsea.png"
        Image.fromarray(data.chelsea()).resize((512, 512)).save(photo)

        demo = zero_shot.launch(prevent_thread_lock=True)
        client = Client(demo.local_url, verbose=False)
        for _ in range(3):  # warm-up: the label set is embedded once, then cached
            client.predict(handle_file(str(photo)), LABELS, TEMPLATES, api_name="/classify")
        ms = _times(lambda i: client.predict(handle_file(str(photo)), LABELS, TEMPLATES, api_name="/classify"),
                    args.requests)
        rows.append(_row("zero-shot: 1 image, 10 labels, 3 templates", ms, 150))
        demo.close()

        t0 = time.perf_counter()
        demo = retrieval.launch(prevent_thread_lock=True, fashion=args.gallery)
        build = time.perf_counter() - t0
        # the answer is the ranked list and the gallery's file URLs; the browser then fetches the thumbnails
        # itself (cached), so the client does not download them here
        client = Client(demo.local_url, verbose=False, download_files=False)
        for q in QUERIES[:2]:
            client.predict(q, 10, api_name="/search_images_by_text")
        ms = _times(lambda i: client.predict(QUERIES[i % len(QUERIES)], 10, api_name="/search_images_by_text"),
                    args.requests)
        rows.append(_row(f"retrieval: text query over {args.gallery:,} images", ms, 100))
        demo.close()

    print(f"retrieval app start with a {args.gallery:,}-image gallery (index built or reused): {build:.1f} s")
    print(f"\n{'request (through the running app)':<42} {'median':>8} {'p90':>8} {'min':>8}   target")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
