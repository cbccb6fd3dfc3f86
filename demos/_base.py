"""The bottom of the demos, imported by every other demo module and importing none: where the shipped files
are, the error a request the demo cannot serve raises, and the one-line progress messages.

>>> from embedhub.demos._base import ASSETS, DemoError, say
>>> (ASSETS / "examples").is_dir()
True
>>> str(DemoError("model 'nope'   not found"))
"model 'nope' not found"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ASSETS", "EXAMPLES", "DemoError", "embedhub_home", "say"]

#: files shipped with the demos: the default model's heads and run record, the example images
ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLES = ASSETS / "examples"


class DemoError(ValueError):
    """A request the demo cannot serve (unknown model, unreadable or oversized image, ...): the message is
    one readable line for the page, naming what was wrong.

    >>> str(DemoError("model 'nope' not found: no such folder, alias or Hub repo"))
    "model 'nope' not found: no such folder, alias or Hub repo"
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def say(message: str, demo: str = "demo") -> None:
    """One line of what a demo is doing, on stderr at once (``embedhub demo: loading ...``), so a start that
    takes a while shows its steps; progress bars (tqdm) go to stderr too.

    >>> say("loading the image model lit-fashion-mnist (torch)", "zero-shot")  # doctest: +SKIP
    """
    print(f"embedhub {demo}: {message}", file=sys.stderr, flush=True)


def embedhub_home() -> Path:
    """Where the demos keep what they build: ``$EMBEDHUB_HOME``, else ``~/.cache/embedhub``.

    >>> embedhub_home().name in ("embedhub", os.path.basename(os.environ.get("EMBEDHUB_HOME", "")))
    True
    """
    return Path(os.environ.get("EMBEDHUB_HOME") or Path.home() / ".cache" / "embedhub").expanduser()
