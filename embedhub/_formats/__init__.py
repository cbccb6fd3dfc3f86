"""Format detection: one strict loader per format, tried in a fixed order."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from .._errors import UnknownFormatError
from . import embedhub, hf_clip, open_clip, sentence_transformers

#: detection order: embedhub's own format first, then the formats people already have
FORMATS: tuple[ModuleType, ...] = (embedhub, sentence_transformers, open_clip, hf_clip)


def detect(folder: Path) -> ModuleType:
    """The format module whose marker files ``folder`` holds, else a clear error."""
    for fmt in FORMATS:
        if fmt.matches(folder):
            return fmt
    present = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    raise UnknownFormatError(
        f"{folder} matches no format embedhub loads. Expected one of: embedhub_config.json (embedhub), "
        "modules.json (sentence-transformers), open_clip_config.json (open_clip), config.json of a CLIPModel "
        f"(transformers CLIP). Found: {', '.join(present) or 'no files'}"
    )
