"""``python -m training.wording [--write]``: print (or write to ``training/wordings``) the Fashion-MNIST
training wording generated from WordNet. The code lives in :mod:`training.data.wording`.

>>> main.__module__.endswith("data.wording")
True
"""

from __future__ import annotations

from .data.wording import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
