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


def model_files(folder: Path) -> list[str]:
    """The files (relative POSIX paths, sorted) of ``folder`` that its format needs: what
    ``snapshot_download`` fetches for it and what ``push_to_hub`` uploads. Symlinks that leave the
    folder, hidden files and anything else are left out."""
    import fnmatch

    folder = Path(folder)
    fmt = detect(folder)
    root = folder.resolve()
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not p.is_file():
            continue
        if not p.resolve().is_relative_to(root) and "/snapshots/" not in str(folder):
            continue
        if any(fnmatch.fnmatchcase(rel, pat) and rel.count("/") == pat.count("/") for pat in fmt.ALLOW_PATTERNS):
            out.append(rel)
    return out
