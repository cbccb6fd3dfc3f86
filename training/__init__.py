"""Training recipes built on embedhub (installed as ``embedhub.training``); see the issues for the recipes."""
