"""Shared helpers for folders in transformers' layout (tokenizers, models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._errors import UnknownFormatError, WeightsError
from .._preprocess import HFTextPreprocessor


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise UnknownFormatError(f"{path} is not valid JSON: {exc}") from exc


def _token_content(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def text_preprocessor(
    folder: Path, *, max_length: int | None = None, lowercase: bool = False, fallback_max_length: int = 512
) -> HFTextPreprocessor:
    """The fast tokenizer of a transformers folder, with its pad token and max length."""
    from tokenizers import Tokenizer

    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    if (folder / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif tok_cfg or (folder / "vocab.txt").is_file() or (folder / "vocab.json").is_file():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise UnknownFormatError(f"{folder}: tokenizer has no fast (tokenizers) version")
        tok = Tokenizer.from_str(backend.to_str())
    else:
        raise UnknownFormatError(f"{folder} has no tokenizer files (tokenizer.json or tokenizer_config.json)")
    pad_token = _token_content(tok_cfg.get("pad_token"))
    special = folder / "special_tokens_map.json"
    if pad_token is None and special.is_file():
        pad_token = _token_content(read_json(special).get("pad_token"))
    pad_id = tok.token_to_id(pad_token) if pad_token else None
    if max_length is None:
        mml = tok_cfg.get("model_max_length")
        max_length = int(mml) if isinstance(mml, (int, float)) and mml < 1_000_000 else fallback_max_length
    return HFTextPreprocessor(tok, max_length=max_length, pad_id=pad_id, lowercase=lowercase)


def from_pretrained(cls: Any, folder: Path, *, what: str, trust_remote_code: bool):
    """``cls.from_pretrained`` from safetensors only, failing on any missing/unexpected/mis-shaped tensor."""
    from .._weights import find_safetensors

    find_safetensors(folder)  # refuses pickle-only folders with a clear message
    cfg = read_json(folder / "config.json")
    if cfg.get("auto_map") and not trust_remote_code:
        raise UnknownFormatError(
            f"{folder} needs custom code from the repo ('auto_map' in config.json); embedhub never runs remote "
            "code unless you pass trust_remote_code=True"
        )
    try:
        model, info = cls.from_pretrained(
            str(folder),
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"cannot load the {what} weights from {folder}: {exc}") from exc
    except Exception as exc:  # safetensors' own parse errors
        if type(exc).__name__ in {"SafetensorError", "HeaderTooLarge"} or "safetensor" in str(exc).lower():
            raise WeightsError(f"cannot load the {what} weights from {folder}: corrupted safetensors ({exc})") from exc
        raise
    problems = {
        k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    }
    if problems:
        detail = "; ".join(f"{k}: {list(v)[:3]}" for k, v in problems.items())
        raise WeightsError(f"weights in {folder} do not match the {what} architecture (strict load): {detail}")
    return model
