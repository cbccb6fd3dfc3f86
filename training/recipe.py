"""A recipe's command line: ``[--config FILE.yaml] [--resume] [key=value ...]`` -> a validated config ->
the recipe's run. A config is read from its dataclass defaults, then the YAML file, then the overrides.

>>> ClipConfig = RECIPE_CONFIGS["clip"]
>>> cfg = load_config(ClipConfig, yaml_path=None, overrides=["lr=1e-3", "epochs=2"])
>>> cfg.lr, cfg.epochs
(0.001, 2)
>>> try:
...     load_config(ClipConfig, overrides=["epochs=-1"])
... except ConfigValueError as exc:
...     print(exc)
override 'epochs=-1': epochs=-1: expected an integer >= 1 (passes over the training data)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from .config import RECIPE_CONFIGS, RULES, TrainConfig, type_name
from .errors import ConfigValueError, RecipeError

C = TypeVar("C", bound=TrainConfig)

def _convert(value: Any, typ: Any, *, text: bool) -> Any:
    """A value from a ``key=value`` override (``text``) or a YAML file as the field type; what cannot be
    converted is passed on unchanged, for :func:`validate` to report."""
    name = str(typ)
    if name.startswith("dict"):
        return json.loads(value) if text else value  # an override is JSON: prompts={"query": "query: "}
    if name.startswith("tuple"):
        if text:
            value = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            return value
        return tuple(_convert(v, float, text=True) if "float" in name and isinstance(v, str) else v for v in value)
    if not isinstance(value, str):
        return value
    if typ is bool or name == "bool":
        low = value.strip().lower()
        return True if low in ("1", "true", "yes", "on") else False if low in ("0", "false", "no", "off") else value
    try:
        if typ is int or name == "int":
            return int(value)
        if typ is float or name == "float":
            return float(value)  # YAML 1.1 reads 1e-3 as a string
    except ValueError:
        return value
    return value


def _read_yaml(yaml_path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(yaml_path)
    if not path.is_file():
        raise RecipeError(f"--config {path}: file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"--config {path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise RecipeError(f"--config {path}: expected a mapping of config keys to values, got "
                          f"{type(loaded).__name__}")
    return loaded


def load_config(cls: type[C], yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults, then the YAML file, then ``key=value`` overrides; unknown keys and bad values are
    :class:`RecipeError` / :class:`ConfigValueError`, naming where the value came from."""
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    hints = get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls))
    if yaml_path:
        loaded = _read_yaml(yaml_path)
        unknown = sorted(set(loaded) - set(names))
        if unknown:
            raise RecipeError(f"{yaml_path}: unknown config keys {unknown}; known: {names}")
        for key, value in loaded.items():
            values[key] = _convert(value, hints[key], text=False)
            source[key] = str(yaml_path)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key=value (known keys: {names})")
        key, value = item.split("=", 1)
        key = key.lstrip("-").replace("-", "_")
        if key not in names:
            raise RecipeError(f"unknown config key {key!r}; known: {names}")
        try:
            values[key] = _convert(value, hints[key], text=True)
        except ValueError as exc:  # a list override that is not valid JSON
            raise ConfigValueError(key, value, f"{type_name(hints[key])} ({exc})", f"override {item!r}") from None
        source[key] = f"override {item!r}"
    try:
        return cls(**values)
    except ConfigValueError as exc:
        if exc.key in source:
            raise ConfigValueError(exc.key, exc.value, exc.expected, source[exc.key]) from None
        raise


def usage(cls: type[TrainConfig], prog: str) -> str:
    """The recipe command's help: its options and every config key with its default."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--resume] [key=value ...]", "",
             f"{cls.__name__} keys (default; expected):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name}={default!r}  ({RULES[f.name].expected})")
    lines += ["", "Exit codes: 0 success, 1 training failed, 2 bad usage, config or data."]
    return "\n".join(lines)


def parse_args(cls: type[C], argv: list[str]) -> C:
    """``[--config FILE] [--resume] [key=value ...]`` -> a validated config (:class:`RecipeError` otherwise)."""
    argv = list(argv)
    yaml_path = None
    while "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv) or "=" in argv[i + 1] or argv[i + 1].startswith("-"):
            raise RecipeError("--config needs a YAML file: --config FILE.yaml")
        if yaml_path is not None:
            raise RecipeError("--config given twice")
        yaml_path = argv[i + 1]
        del argv[i: i + 2]
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            raise RecipeError(f"{arg!r}: write --config FILE.yaml")
        if arg == "--resume":
            argv[i] = "resume=true"
    return load_config(cls, yaml_path, argv)


def recipe_main(cls: type[C], run: Any, argv: list[str] | None = None, prog: str | None = None) -> int:
    """A recipe's command line: ``[--config FILE] [--resume] [key=value ...]`` -> ``run(config)``.

    Returns 0 on success, 2 for a bad option, config value or data (the message on stderr, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or f"python -m training.{next(k for k, v in RECIPE_CONFIGS.items() if v is cls)}"
    if "-h" in argv or "--help" in argv:
        print(usage(cls, prog))
        return 0
    from embedhub import PublishError

    from .dist import barrier, destroy

    try:
        cfg = parse_args(cls, argv)
        if cfg.push_to_hub:  # before anything is computed or written: a push needs a token
            from embedhub.hub import resolve_token

            resolve_token(None)
        run(cfg)
        barrier()  # every rank has finished (rank 0 evaluates and saves last) before the group goes away
    except (RecipeError, PublishError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy()  # leave torchrun's process group cleanly
    return 0


__all__ = ["load_config", "parse_args", "recipe_main", "usage"]
