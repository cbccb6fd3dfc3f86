"""``python -m embedhub ...``: the ``embedhub`` command line."""

from __future__ import annotations

from embedhub.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
