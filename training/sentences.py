"""Streamed sentence input for the sentence recipes: a ``.txt`` file (one sentence a line) or ``.jsonl``
(one object a line with a ``"text"`` field), read line by line, never whole, shuffled through a bounded
buffer whose order depends only on (seed, epoch).

Blank lines are skipped. Lines that are not valid UTF-8 are skipped and counted (``SentenceFile.invalid``);
a ``.jsonl`` line that is not an object with a string ``"text"`` is a :class:`DataError` naming the line.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
>>> _ = path.write_text("a cat\\n\\na dog\\nbirds\\n")
>>> data = SentenceFile(path)
>>> len(data), sorted(data.stream(seed=0, epoch=0))
(3, ['a cat', 'a dog', 'birds'])
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from embedhub.utils import epoch_generator

from .config import DataError


class SentenceFile:
    """A sentence file read as a stream; ``len`` counts its sentences in one streamed pass."""

    def __init__(self, path: str | Path, shuffle_buffer: int = 100_000):
        self.path = Path(path)
        self.shuffle_buffer = shuffle_buffer
        if not self.path.is_file():
            raise DataError(f"{self.path}: sentence file not found")
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.invalid = 0  # lines skipped as invalid UTF-8 in the counting pass
        self._count = sum(1 for _ in self._read(count_invalid=True))

    def __len__(self) -> int:
        return self._count

    def _read(self, count_invalid: bool = False) -> Iterator[str]:
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    if count_invalid:
                        self.invalid += 1
                    continue
                if not line:
                    continue
                if self.jsonl:
                    try:
                        obj = json.loads(line)
                    except ValueError as exc:
                        raise DataError(f"{self.path}, line {number}: not valid JSON ({exc})") from None
                    text = obj.get("text") if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{self.path}, line {number}: expected an object with a string 'text' "
                                        f"field, got {line[:80]!r}")
                    line = text.strip()
                    if not line:
                        continue
                yield line

    def stream(self, *, seed: int, epoch: int) -> Iterator[str]:
        """The sentences in a shuffled order (a buffer of ``shuffle_buffer`` lines; a file that fits is
        fully shuffled), the same for the same (seed, epoch)."""
        import torch

        g = epoch_generator(seed, epoch)
        buffer: list[str] = []
        for line in self._read():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(line)
                continue
            i = int(torch.randint(len(buffer), (1,), generator=g))
            buffer[i], line = line, buffer[i]
            yield line
        for i in torch.randperm(len(buffer), generator=g).tolist():
            yield buffer[i]


__all__ = ["SentenceFile"]
