"""Write ``wordnet_examples.txt``: 3,000 real English example sentences from WordNet 3.0.

The sentences are the quoted usage examples after `` | `` in Debian's ``wordnet-base`` database
(``apt-get install wordnet-base`` -> ``/usr/share/wordnet/data.{noun,verb,adj,adv}``): those of 6 to
20 words, first occurrence of each kept, then every n-th one so that 3,000 remain, spread over
the four parts of speech in file order. Deterministic: the same database gives the same file.

    python demos/retrieval/texts/make_wordnet_examples.py            # rewrites the file beside it
"""

from __future__ import annotations

import sys
from pathlib import Path

from embedhub.training.corpora import WORDNET, unique
from embedhub.training.corpora import wordnet_examples as all_examples

COUNT = 3000


def wordnet_examples(folder: Path = WORDNET, count: int = COUNT) -> list[str]:
    """``count`` example sentences of 6-20 words, evenly spaced over the database's unique examples.

    >>> wordnet_examples()[:1]  # doctest: +SKIP
    ['it was full of rackets, balls and other objects']
    """
    found = [s for s in unique(all_examples(folder)) if 6 <= len(s.split()) <= 20]
    if len(found) < count:
        raise ValueError(f"{folder}: only {len(found)} example sentences of 6-20 words, {count} asked for")
    step = len(found) / count
    return [found[int(i * step)] for i in range(count)]


if __name__ == "__main__":
    out = Path(__file__).with_name("wordnet_examples.txt")
    sentences = wordnet_examples()
    out.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{out}: {len(sentences)} sentences", file=sys.stderr)
