"""``embedhub train RECIPE [--config FILE] [key=value ...]`` (registered through ``embedhub.commands``)."""

from __future__ import annotations

import argparse
import importlib

RECIPES = ("clip", "protoclip", "pmrl")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model with a recipe (clip, protoclip, pmrl)",
                       description="Train with a recipe; settings come from the recipe's dataclass defaults, "
                       "then --config YAML, then key=value overrides. --resume continues an interrupted run.")
    p.add_argument("recipe", choices=RECIPES)
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="[--config FILE] [--resume] [key=value ...]; `embedhub train RECIPE --help` lists the keys")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    recipe = importlib.import_module(f"{__package__}.{args.recipe}")
    return recipe.main(args.options, prog=f"embedhub train {args.recipe}")
