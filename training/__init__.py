"""Training recipes built on embedhub (installed as ``embedhub.training``).

Layers, each importing only those below it (and the library's public API):

- ``errors``: the recipes' errors (:class:`~training.errors.RecipeError` and its kinds)
- ``data/``: what a run reads (images, image-text pairs, sentence files, wordings, the epoch order) and the
  checks of the data a config names
- ``towers``, ``model``: the towers and two-tower models the recipes train and save
- ``config``: one dataclass per recipe and the rules of its fields
- ``dist``, ``evaluate``, ``losses``, ``publish``, ``loop``: data parallelism, evaluation, the losses, the model
  card and upload, the training loop
- ``recipe``: a recipe's command line (YAML, ``key=value`` overrides, exit codes)
- the recipes: ``clip`` (with ``pairs`` for end-to-end runs), ``protoclip``, ``pmrl`` (with ``audio``),
  ``simcse``; the commands ``cli`` (``embedhub train``), ``corpora`` and ``wording``
"""
