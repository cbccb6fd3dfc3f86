"""Build the demos' offline default image model and print its folder and its shipped zero-shot top-1.

    python -m embedhub.demos.build_default            # assemble it (once) under $EMBEDHUB_HOME/models
    python -m embedhub.demos.build_default --rebuild  # assemble it again
    python -m embedhub.demos.build_default --from-run /tmp/lit-default --command "python -m training.clip ..."
        # refresh demos/assets from a finished LiT recipe run (heads, logit scale and the run's record)
    python -m embedhub.demos.build_default --compare /tmp/lit-default/model   # embeddings vs the run's own model
    python -m embedhub.demos.build_default --examples  # rewrite demos/assets/examples from EXAMPLE_ROWS
    python -m embedhub.demos.build_default --pick-examples  # the rows the default model answers with a margin
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._common import EXAMPLES, FASHION_CLASSES, DemoError

#: the bundled example images: rows of the Fashion-MNIST test split (t10k), two per class, written as
#: ``<class>_<row>.png``. Chosen by :func:`pick_examples` on the default model: rows from
#: ``FIRST_EXAMPLE_ROW`` on (so none is also in the retrieval demo's gallery of the first 1,000), answered
#: right by zero-shot with the class names at probability >= 0.95, and whose 20 nearest images among the
#: first 1,000 are all of their class; the two most probable of each class.
EXAMPLE_ROWS: dict[str, tuple[int, ...]] = {
    "t-shirt": (2954, 1372), "trouser": (2895, 2213), "pullover": (2501, 2868), "dress": (1691, 2328),
    "coat": (2473, 2045), "sandal": (2220, 1137), "shirt": (2230, 2907), "sneaker": (1795, 2645),
    "bag": (1144, 1589), "ankle boot": (1068, 2448),
}
#: example rows are taken from here on (the retrieval demo's bundled gallery holds the rows before)
FIRST_EXAMPLE_ROW = 1000


def write_examples(folder: str | Path = EXAMPLES, rows: dict[str, tuple[int, ...]] | None = None) -> list[Path]:
    """Write the example images: the Fashion-MNIST test images ``rows`` (default :data:`EXAMPLE_ROWS`) as
    PNG files ``<class>_<row>.png`` (spaces as dashes), after removing the example images there before.

    >>> [p.name for p in write_examples("/tmp/examples")][:2]  # doctest: +SKIP
    ['t-shirt_2954.png', 't-shirt_2437.png']
    """
    from embedhub.training.data import fashion_mnist
    from PIL import Image

    rows = EXAMPLE_ROWS if rows is None else rows
    unknown = sorted(set(rows) - set(FASHION_CLASSES))
    if unknown:
        raise DemoError(f"example rows name unknown classes {unknown}; the classes are {list(FASHION_CLASSES)}")
    test = fashion_mnist("test")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("*.png")) + list(folder.glob("*.jpg")):
        old.unlink()
    out = []
    for name, picked in rows.items():
        for row in picked:
            if not 0 <= row < len(test.labels) or FASHION_CLASSES[int(test.labels[row])] != name:
                got = FASHION_CLASSES[int(test.labels[row])] if 0 <= row < len(test.labels) else "out of range"
                raise DemoError(f"test row {row} is not a {name!r} image ({got})")
            path = folder / f"{name.replace(' ', '-')}_{row}.png"
            Image.fromarray(test.images[row]).save(path, optimize=True)
            out.append(path)
    return out


def pick_examples(model: str | Path, *, per_class: int = 2, rows: int = 3000, min_prob: float = 0.95,
                  neighbours: int = 20) -> dict[str, tuple[int, ...]]:
    """The example rows :data:`EXAMPLE_ROWS` records, chosen again on ``model``: among the test rows
    ``FIRST_EXAMPLE_ROW`` to ``rows``, those the model classifies right by zero-shot over the class names
    with probability >= ``min_prob`` and whose ``neighbours`` nearest images among the first
    ``FIRST_EXAMPLE_ROW`` rows are all of their class; the ``per_class`` most probable of each class.

    >>> pick_examples(default_image_model())["coat"]  # doctest: +SKIP
    (2473, 2045)
    """
    import numpy as np

    import embedhub

    from ._common import fashion_mnist_test

    images, labels, classes = fashion_mnist_test(rows)
    m = embedhub.load(model, device="cpu")
    emb = m.encode_image(images, normalize=True, show_progress_bar=True)
    prob = m.zero_shot(images[FIRST_EXAMPLE_ROW:], classes)
    gallery, gallery_labels = emb[:FIRST_EXAMPLE_ROW], labels[:FIRST_EXAMPLE_ROW]
    picked: dict[str, tuple[int, ...]] = {}
    for c, name in enumerate(classes):
        scored = []
        for row in np.nonzero(labels[FIRST_EXAMPLE_ROW:] == c)[0] + FIRST_EXAMPLE_ROW:
            p = prob[row - FIRST_EXAMPLE_ROW]
            near = np.argsort(-(gallery @ emb[row]))[:neighbours]
            if p.argmax() == c and p[c] >= min_prob and (gallery_labels[near] == c).all():
                scored.append((float(p[c]), int(row)))
        picked[name] = tuple(row for _, row in sorted(scored, reverse=True)[:per_class])
    return picked


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
    p.add_argument("--examples", action="store_true",
                   help="rewrite demos/assets/examples from EXAMPLE_ROWS and exit")
    p.add_argument("--pick-examples", action="store_true",
                   help="print the example rows chosen on the default model (to paste into EXAMPLE_ROWS) and exit")
    args = p.parse_args(argv)
    from ._default import default_image_model, extract_heads, shipped_run

    try:
        if args.examples:
            for path in write_examples():
                print(path)
            return 0
        if args.pick_examples:
            print(json.dumps(pick_examples(default_image_model(args.home))))
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
