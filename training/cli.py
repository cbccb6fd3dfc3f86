"""``embedhub train RECIPE [--config FILE] [key=value ...]`` (registered through ``embedhub.commands``)."""

from __future__ import annotations

import argparse
import importlib

RECIPES = ("clip", "protoclip", "pmrl", "simcse", "esimcse")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model with a recipe (" + ", ".join(RECIPES) + ")",
                       description="Train with a recipe; settings come from the recipe's dataclass defaults, "
                       "then --config YAML, then key=value overrides. --resume continues an interrupted run.")
    p.add_argument("recipe", choices=RECIPES)
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="[--config FILE] [--resume] [key=value ...]; `embedhub train RECIPE --help` lists the keys")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.recipe == "esimcse":  # the simcse module runs both sentence recipes
        from . import simcse

        return simcse.main_esimcse(args.options, prog="embedhub train esimcse")
    recipe = importlib.import_module(f"{__package__}.{args.recipe}")
    return recipe.main(args.options, prog=f"embedhub train {args.recipe}")
