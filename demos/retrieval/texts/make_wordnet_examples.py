"""Write ``wordnet_examples.txt``: 3,000 real English example sentences from WordNet 3.0.

The sentences are the quoted usage examples after `` | `` in Debian's ``wordnet-base`` database
(``apt-get install wordnet-base`` -> ``/usr/share/wordnet/data.{noun,verb,adj,adv}``): those of 6 to
20 words, first occurrence of each kept, then every n-th one so that 3,000 remain, spread over
the four parts of speech in file order. Deterministic: the same database gives the same file.

    python demos/retrieval/texts/make_wordnet_examples.py            # rewrites the file beside it
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
COUNT = 3000
_QUOTED = re.compile(r'"([^"]+)"')


def wordnet_examples(folder: Path = WORDNET, count: int = COUNT) -> list[str]:
    """``count`` example sentences of 6-20 words, evenly spaced over the database's unique examples.

    >>> wordnet_examples()[:1]  # doctest: +SKIP
    ['it was full of rackets, balls and other objects']
    """
    seen: set[str] = set()
    found: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{pos}"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: apt-get install wordnet-base")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("  ") or " | " not in line:  # the license header, entries without a gloss
                continue
            for sentence in _QUOTED.findall(line.split(" | ", 1)[1]):
                sentence = " ".join(sentence.split())
                if 6 <= len(sentence.split()) <= 20 and sentence.lower() not in seen:
                    seen.add(sentence.lower())
                    found.append(sentence)
    if len(found) < count:
        raise ValueError(f"{folder}: only {len(found)} example sentences of 6-20 words, {count} asked for")
    step = len(found) / count
    return [found[int(i * step)] for i in range(count)]


if __name__ == "__main__":
    out = Path(__file__).with_name("wordnet_examples.txt")
    sentences = wordnet_examples()
    out.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{out}: {len(sentences)} sentences", file=sys.stderr)
