"""Build the demos' offline default image model and print its folder and its shipped zero-shot top-1.

    python -m embedhub.demos.build_default            # assemble it (once) under $EMBEDHUB_HOME/models
    python -m embedhub.demos.build_default --rebuild  # assemble it again
    python -m embedhub.demos.build_default --from-run /tmp/lit-default --command "python -m training.clip ..."
        # refresh demos/assets from a finished LiT recipe run (heads, logit scale and the run's record)
    python -m embedhub.demos.build_default --compare /tmp/lit-default/model   # embeddings vs the run's own model
    python -m embedhub.demos.build_default --examples  # rewrite demos/assets/examples (needs scikit-image)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._common import EXAMPLES, FASHION_CLASSES, DemoError

#: the scikit-image photographs bundled as examples
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def write_examples(folder: str | Path = EXAMPLES, *, per_class: int = 2, max_side: int = 512) -> list[Path]:
    """Write the example images: the first ``per_class`` Fashion-MNIST test images of each class as PNG
    (``<class>_<i>.png``, spaces as dashes) and scikit-image's photos as JPEG (quality 85, at most ``max_side``
    pixels a side).

    >>> [p.name for p in write_examples("/tmp/examples")][:2]  # doctest: +SKIP
    ['t-shirt_0.png', 't-shirt_1.png']
    """
    import numpy as np
    from embedhub.training.data import fashion_mnist
    from PIL import Image
    from skimage import data as skdata

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test = fashion_mnist("test")
    out = []
    for c, name in enumerate(FASHION_CLASSES):
        for i, row in enumerate(np.nonzero(test.labels == c)[0][:per_class]):
            path = folder / f"{name.replace(' ', '-')}_{i}.png"
            Image.fromarray(test.images[row]).save(path, optimize=True)
            out.append(path)
    for name in PHOTOS:
        img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        path = folder / f"{name}.jpg"
        img.save(path, quality=85, optimize=True)
        out.append(path)
    return out


def compare(folder: str | Path, other: str | Path, n: int = 1000) -> dict[str, float]:
    """Max abs difference between two models' embeddings of the first ``n`` Fashion-MNIST test images and of
    the recipe's captions of the 10 classes, and each model's zero-shot top-1 on those images.

    >>> compare(default_image_model(), "/tmp/lit-default/model")  # doctest: +SKIP
    {'images': 1000, 'image_max_abs_diff': 0.0, 'text_max_abs_diff': 0.0, ...}
    """
    import numpy as np

    import embedhub

    from ._common import fashion_mnist_test

    images, labels, classes = fashion_mnist_test(n)
    a, b = embedhub.load(folder, device="cpu"), embedhub.load(other, device="cpu")
    captions = [t.format(c) for c in classes for t in a.templates]
    out: dict[str, float] = {"images": len(images)}
    for kind, inputs in (("image", images), ("text", captions)):
        ea = getattr(a, f"encode_{kind}")(inputs, show_progress_bar=False)
        eb = getattr(b, f"encode_{kind}")(inputs, show_progress_bar=False)
        out[f"{kind}_max_abs_diff"] = float(np.abs(ea - eb).max())
    for name, model in (("zeroshot_top1", a), ("other_zeroshot_top1", b)):
        out[name] = float((model.zero_shot(images, classes).argmax(1) == labels).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedhub.demos.build_default", description=__doc__.split("\n")[0])
    p.add_argument("--rebuild", action="store_true", help="assemble the folder again even when it is up to date")
    p.add_argument("--home", default=None, help="instead of $EMBEDHUB_HOME (default ~/.cache/embedhub)")
    p.add_argument("--from-run", default=None, metavar="RUN",
                   help="refresh demos/assets from this finished LiT recipe run folder, then build")
    p.add_argument("--command", default=None, help="with --from-run: the recipe command that made the run")
    p.add_argument("--note", default="", help="with --from-run: where and how the run ran (CPU, threads, load)")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="then compare the default model with this model folder (e.g. RUN/model of the recipe)")
    p.add_argument("--compare-images", type=int, default=1000, help="with --compare: Fashion-MNIST test images")
    p.add_argument("--examples", action="store_true", help="rewrite demos/assets/examples and exit")
    args = p.parse_args(argv)
    from ._default import default_image_model, extract_heads, shipped_run

    try:
        if args.examples:
            for path in write_examples():
                print(path)
            return 0
        if args.from_run:
            if not args.command:
                p.error("--from-run needs --command (the recipe command line that made the run)")
            extract_heads(args.from_run, command=args.command, note=args.note)
        t0 = time.perf_counter()
        folder = default_image_model(args.home, rebuild=args.rebuild or bool(args.from_run))
        run = shipped_run()
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    top1 = run.get("metrics", {}).get("zeroshot_top1")
    print(f"default image model: {folder} ({time.perf_counter() - t0:.1f} s)")
    if top1 is not None:
        print(f"zero-shot top-1 on the Fashion-MNIST test set (10,000 images, 10 classes): {top1:.2%}")
    unseen = run.get("metrics", {}).get("zeroshot_unseen_wording_top1")
    if unseen is not None:
        print(f"zero-shot top-1 with a wording it never trained on (embedhub/training/wordings/"
              f"fashion_mnist_heldout.json): {unseen:.2%}")
    print(f"made by: {run.get('command')}")
    if args.compare:
        print(json.dumps(compare(folder, args.compare, args.compare_images), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
