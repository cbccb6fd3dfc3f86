"""The walk of ``embedhub embed`` through the library: which files' functions run while it embeds a small corpus.

Prints the library files whose functions ran (model load included), the number of switches between files in
call order, and how often the job and the corpus reader hand over to each other. Used for docs/architecture.md.

    python scripts/walk_embed.py            # all-MiniLM-L6-v2, a 40-row .jsonl
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import embedhub
from embedhub.cli import main as cli


def main() -> int:
    lib = str(Path(embedhub.__file__).parent)
    tmp = Path(tempfile.mkdtemp(prefix="embedhub-walk-"))
    (tmp / "c.jsonl").write_text("".join(f'{{"text": "sentence number {i} about things"}}\n' for i in range(40)))
    seen: set[str] = set()
    order: list[str] = []

    def trace(frame, event, arg):  # noqa: ARG001
        if event == "call" and frame.f_code.co_name != "<module>" and frame.f_code.co_filename.startswith(lib):
            rel = os.path.relpath(frame.f_code.co_filename, lib)
            seen.add(rel)
            if not order or order[-1] != rel:
                order.append(rel)

    sys.setprofile(trace)
    rc = cli(["embed", "--model", "all-MiniLM-L6-v2", "--input", str(tmp / "c.jsonl"), "--output", str(tmp / "out")])
    sys.setprofile(None)
    files = sorted(f for f in seen if not f.endswith("__init__.py"))
    print(f"exit {rc}; library files whose functions ran: {len(files)}")
    print(" ".join(files))
    print("switches between files in call order:", len(order) - 1)
    job = {"_job.py", "jobs/embed.py", "jobs/job.py", "jobs/local.py"}
    reader = {"_corpus.py", "jobs/corpus.py"}
    seq = ["job" if f in job else "reader" for f in order if f in job | reader]
    print("hand-overs between the job and the corpus reader:", sum(a != b for a, b in zip(seq, seq[1:])))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
