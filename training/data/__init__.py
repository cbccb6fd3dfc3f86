"""The recipes' data: what a run reads and the checks of what a config names. It imports only
:mod:`training.errors` and the library's public API; nothing here imports a recipe, the loop or the config.

- ``images``: samples ``(key, image, caption, label)`` from Fashion-MNIST, a captions file beside its images,
  or webdataset shards (their names are also importable from ``training.data``, where they always lived)
- ``pairs``: the image-text pairs of the end-to-end recipes (training batches, the evaluation set)
- ``sentences``: the sentence files of the SimCSE recipes, streamed
- ``wording``: the names and templates that caption Fashion-MNIST (``python -m training.wording``)
- ``order``: the (seed, epoch) shuffles every rank and a resumed run share
- ``checks``: what the config rules check about the data before any work

>>> len(FASHION_CLASSES)
10
"""

from .images import (
    FASHION_CLASSES,
    FASHION_DIR,
    IMAGE_SUFFIXES,
    LabelledImages,
    Sample,
    captioned_folder,
    expand_shards,
    fashion_mnist,
    webdataset,
    write_webdataset,
)

__all__ = ["FASHION_CLASSES", "FASHION_DIR", "IMAGE_SUFFIXES", "LabelledImages", "Sample", "captioned_folder",
           "expand_shards", "fashion_mnist", "webdataset", "write_webdataset"]
