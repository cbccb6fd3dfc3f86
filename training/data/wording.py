"""Wording variety for captions of labelled images: many names per class and many caption templates.

The LiT recipe on Fashion-MNIST captions each training image with one of its class's names (WordNet synonyms,
plurals, more specific and longer names, the name with its WordNet hypernym) in one of many paraphrased
templates, sampled per example, so that the trained text head places the ways people word a class near its
images. A second, held-out wording (names and templates a user would type) is never used in training and
measures how the model does on wording it never saw.

Both wordings are data files in ``training/wordings``: ``fashion_mnist_train.json`` is generated from WordNet
(Debian's ``wordnet-base``, read directly from ``/usr/share/wordnet``) by::

    python -m training.wording                       # print the generated training wording
    python -m training.wording --write               # regenerate training/wordings/fashion_mnist_train.json

and ``fashion_mnist_heldout.json`` is written by hand. Names in the two are disjoint after :func:`name_key`
(case, spaces, hyphens and plural endings ignored), and so are the templates after :func:`template_key`.

>>> w = load_wording("train")
>>> w.names["sneaker"][:3], len(w.templates) > 10
(['sneaker', 'sneakers', 'gym shoe'], True)
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError, MissingDataError
from .images import FASHION_CLASSES

WORDINGS = Path(__file__).resolve().parents[1] / "wordings"  # training/wordings
WORDNET_DIR = Path("/usr/share/wordnet")

#: templates of the held-out wording are never among these (checked by :func:`check_disjoint`)
TRAIN_TEMPLATES = (
    # the recipe's own templates (FASHION_TEMPLATES), kept as the model's zero-shot templates
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a grayscale picture of a {}.",
    "a product photo of a {}.",
    # paraphrases
    "a picture of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a blurry photo of a {}.",
    "a small photo of a {}.",
    "a catalogue photo of a {}.",
    "a {} on a plain background.",
    "a thumbnail of a {}.",
    "there is a {} in this picture.",
    "fashion item: {}.",
    "a {}.",
)

#: where each Fashion-MNIST class's training names come from: WordNet senses whose lemmas are its synonyms
#: (``lemma.n.N``, N as numbered in index.noun), senses of more specific kinds (hyponyms), hand-written longer
#: names, and names left out (ambiguous, or another class's)
FASHION_SOURCES: dict[str, dict[str, list[str]]] = {
    "t-shirt": {"synsets": ["t-shirt.n.1"], "hyponyms": [], "longer": ["short-sleeved t-shirt", "crew-neck t-shirt",
                                                                     "cotton t-shirt"], "exclude": []},
    "trouser": {"synsets": ["trouser.n.1"], "hyponyms": ["chino.n.1", "corduroy.n.2", "sweat_pants.n.1"],
                "longer": ["pair of trousers", "long trousers", "casual trousers"], "exclude": ["pant", "cords"]},
    "pullover": {"synsets": ["pullover.n.1"], "hyponyms": ["turtleneck.n.1"],
                 "longer": ["knitted pullover", "wool pullover", "long-sleeved pullover"], "exclude": ["turtle"]},
    "dress": {"synsets": ["dress.n.1"], "hyponyms": ["shirtdress.n.1", "cocktail_dress.n.1", "caftan.n.2"],
              "longer": ["sleeveless dress", "short dress", "evening dress"], "exclude": ["sheath", "kaftan"]},
    "coat": {"synsets": ["coat.n.1"], "hyponyms": ["raincoat.n.1", "greatcoat.n.1", "duffel_coat.n.1", "fur_coat.n.1"],
             "longer": ["long coat", "wool coat", "coat with buttons"], "exclude": ["waterproof", "duffle coat"]},
    "sandal": {"synsets": ["sandal.n.1"], "hyponyms": ["espadrille.n.1", "huarache.n.1"],
               "longer": ["leather sandal", "flat sandal", "high-heeled sandal"], "exclude": ["huaraches"]},
    "shirt": {"synsets": ["shirt.n.1"], "hyponyms": ["dress_shirt.n.1", "polo_shirt.n.1", "work-shirt.n.1"],
              "longer": ["long-sleeved shirt", "checked shirt", "shirt with a collar"], "exclude": ["evening shirt"]},
    "sneaker": {"synsets": ["sneaker.n.1"], "hyponyms": ["plimsoll.n.2"],
                "longer": ["canvas shoe", "lace-up sneaker", "low-top sneaker"], "exclude": []},
    "bag": {"synsets": ["handbag.n.1"], "hyponyms": ["clutch_bag.n.1", "evening_bag.n.1"],
            "longer": ["leather bag", "bag with a handle", "ladies' bag"],
            "exclude": ["handbag", "purse", "clutch"]},
    "ankle boot": {"synsets": ["half_boot.n.1"], "hyponyms": [],
                   "longer": ["ankle boot", "leather ankle boot", "heeled ankle boot", "ankle-high boot"],
                   "exclude": ["buskin", "top boot"]},
}

_IRREGULAR_PLURALS = {"trousers": "trousers", "pants": "pants", "jeans": "jeans", "chinos": "chinos",
                      "sweatpants": "sweatpants", "corduroys": "corduroys"}


# ------------------------------------------------------------------------------------------ keys
def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def name_key(name: str) -> str:
    """A name with case, punctuation, spaces and plural endings ignored: names with equal keys count as the
    same wording.

    >>> name_key("T-Shirts") == name_key("tshirt"), name_key("dresses") == name_key("dress")
    (True, True)
    """
    return "".join(_singular(w) for w in re.findall(r"[a-z]+", name.lower()))


def template_key(template: str) -> str:
    """A template with case, punctuation and spacing ignored (``{}`` kept).

    >>> template_key("A photo of a {}.") == template_key("a photo of a {}")
    True
    """
    return " ".join(re.findall(r"[a-z0-9]+|\{\}", template.lower()))


def one_placeholder(template: str) -> bool:
    """Whether ``template`` holds exactly one ``{}`` (or ``{0}``) for the class name and formats.

    >>> one_placeholder("a photo of a {}."), one_placeholder("a {} and a {}"), one_placeholder("no slot")
    (True, False, False)
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        template.format("x")
    except (ValueError, IndexError, KeyError):
        return False
    return fields == [""] or fields == ["0"]


def plural(name: str) -> str:
    """English plural of a name's last word (``"gym shoe" -> "gym shoes"``, ``"dress" -> "dresses"``).

    >>> plural("gym shoe"), plural("dress"), plural("pair of trousers")
    ('gym shoes', 'dresses', 'pairs of trousers')
    """
    if " of " in name:  # "pair of trousers" -> "pairs of trousers"
        head, _, tail = name.partition(" of ")
        return f"{plural(head)} of {tail}"
    if " with " in name:
        head, _, tail = name.partition(" with ")
        return f"{plural(head)} with {tail}"
    words = name.split(" ")
    last = words[-1]
    if last in _IRREGULAR_PLURALS or last.endswith("s") and not last.endswith("ss"):
        out = _IRREGULAR_PLURALS.get(last, last)
    elif last.endswith(("s", "sh", "ch", "x")):
        out = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return " ".join(words[:-1] + [out])


# ------------------------------------------------------------------------------------------ WordNet
@dataclass(frozen=True)
class Synset:
    """A WordNet noun synset: its lemmas (spaces for underscores) and its hypernym and hyponym offsets."""

    offset: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[str, ...]
    hyponyms: tuple[str, ...]
    gloss: str


class WordNet:
    """WordNet nouns read directly from the database files (``index.noun``, ``data.noun``).

    >>> wn = WordNet()                                 # doctest: +SKIP
    >>> wn.sense("sneaker.n.1").lemmas                 # doctest: +SKIP
    ('gym shoe', 'sneaker', 'tennis shoe')
    """

    def __init__(self, folder: str | Path = WORDNET_DIR):
        self.folder = Path(folder)
        index, data = self.folder / "index.noun", self.folder / "data.noun"
        for f in (index, data):
            if not f.is_file():
                raise MissingDataError(f"{f} not found: apt-get install wordnet-base (WordNet's database files)")
        self._index: dict[str, list[str]] = {}
        for line in index.read_text(encoding="latin-1").splitlines():
            if line.startswith(" ") or not line.strip():
                continue  # the licence header
            parts = line.split()
            p_cnt = int(parts[3])
            self._index[parts[0]] = parts[4 + p_cnt + 2:]
        self._data = data

    def sense(self, key: str) -> Synset:
        """``"lemma.n.N"``: the N-th noun sense of the lemma (underscores for spaces)."""
        m = re.fullmatch(r"(.+)\.n\.(\d+)", key)
        if not m:
            raise ValueError(f"sense {key!r}: expected lemma.n.N, e.g. sneaker.n.1")
        offsets = self._index.get(m.group(1).lower())
        n = int(m.group(2))
        if not offsets or not 1 <= n <= len(offsets):
            raise DataError(f"sense {key!r}: WordNet has {len(offsets or [])} noun senses of {m.group(1)!r}")
        return self.synset(offsets[n - 1])

    def synset(self, offset: str) -> Synset:
        with open(self._data, "rb") as f:
            f.seek(int(offset))
            line = f.readline().decode("latin-1")
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        if parts[0] != offset:
            raise DataError(f"{self._data}: no synset at offset {offset}")
        n_words = int(parts[3], 16)
        lemmas = tuple(parts[4 + 2 * i].replace("_", " ") for i in range(n_words))
        i = 4 + 2 * n_words
        ptrs = [parts[i + 1 + 4 * k: i + 5 + 4 * k] for k in range(int(parts[i]))]
        hyper = tuple(o for s, o, pos, _ in ptrs if s in ("@", "@i") and pos == "n")
        hypo = tuple(o for s, o, pos, _ in ptrs if s in ("~", "~i") and pos == "n")
        return Synset(offset, lemmas, hyper, hypo, gloss.strip())


# ------------------------------------------------------------------------------------------ wordings
@dataclass(frozen=True)
class Wording:
    """Names of each class (the class's own name first) and caption templates (each with one ``{}``)."""

    names: dict[str, list[str]]
    templates: tuple[str, ...]

    def captions(self, cls: str) -> list[str]:
        """Every caption of a class: each name in each template (name-major)."""
        return [t.format(n) for n in self.names[cls] for t in self.templates]


def _dedupe(names: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for n in names:
        if n.lower() not in seen:
            seen.add(n.lower())
            out.append(n)
    return out


def generate_training_wording(wordnet: WordNet | None = None, heldout: Wording | None = None,
                              sources: dict[str, dict[str, list[str]]] = FASHION_SOURCES,
                              templates: tuple[str, ...] = TRAIN_TEMPLATES) -> Wording:
    """The training wording of Fashion-MNIST from WordNet: for each class its own name, the lemmas of its
    synsets, the lemmas of the listed hyponyms, the longer names, a plural of each, and "<name>, a kind of
    <hypernym>" (the first hypernym lemma up the chain that is not held out). Names that are held out (same
    :func:`name_key`) or excluded are dropped.
    """
    wn = wordnet or WordNet()
    heldout = heldout or load_wording("heldout")
    banned = {name_key(n) for names in heldout.names.values() for n in names}
    banned_t = {template_key(t) for t in heldout.templates}
    names: dict[str, list[str]] = {}
    for cls, src in sources.items():
        drop = banned | {name_key(n) for n in src["exclude"]}
        synsets = [wn.sense(k) for k in src["synsets"]]
        base = [cls] + [lemma.lower() for s in synsets for lemma in s.lemmas]
        base += [lemma.lower() for k in src["hyponyms"] for lemma in wn.sense(k).lemmas]
        base += src["longer"]
        single = [n for n in _dedupe(base) if name_key(n) not in drop]
        kept = _dedupe(x for n in single for x in (n, plural(n)))
        kept = [n for n in kept if name_key(n) not in drop]
        hyper = _hypernym(wn, synsets[0], drop | {name_key(c) for c in sources})  # never another class's name
        if hyper:
            kept.append(f"{cls}, a kind of {hyper}")
        names[cls] = kept
    return Wording(names, tuple(t for t in templates if template_key(t) not in banned_t))


def _hypernym(wn: WordNet, synset: Synset, banned: set[str]) -> str | None:
    current = synset
    for _ in range(6):
        if not current.hypernyms:
            return None
        current = wn.synset(current.hypernyms[0])
        for lemma in current.lemmas:
            if name_key(lemma) not in banned:
                return lemma.lower()
    return None


#: the largest wording file read (the shipped ones are a few KB)
MAX_WORDING_BYTES = 1 << 20


def load_wording(which: str, folder: str | Path = WORDINGS, dataset: str = "fashion_mnist") -> Wording:
    """``which`` = ``"train"`` or ``"heldout"``: ``<folder>/<dataset>_<which>.json``, checked (every class of
    the dataset named, names non-empty text, each template with one ``{}``)."""
    if which not in ("train", "heldout"):
        raise ValueError(f"which must be 'train' or 'heldout', got {which!r}")
    path = Path(folder) / f"{dataset}_{which}.json"
    if not path.exists():
        raise MissingDataError(f"wording file {path} not found")
    if not path.is_file():  # a folder, a FIFO (which would block the read), a device
        raise DataError(f"{path}: not a regular file")
    if path.stat().st_size > MAX_WORDING_BYTES:
        raise DataError(f"{path}: {path.stat().st_size} bytes, more than the {MAX_WORDING_BYTES} a wording file may be")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    names, templates = obj.get("names") if isinstance(obj, dict) else None, obj.get("templates") if isinstance(
        obj, dict) else None
    if not isinstance(names, dict) or sorted(names) != sorted(FASHION_CLASSES):
        raise DataError(f"{path}: 'names' must map each class {list(FASHION_CLASSES)} to its names")
    for cls, ns in names.items():
        if not isinstance(ns, list) or not ns or not all(isinstance(n, str) and n.strip() for n in ns):
            raise DataError(f"{path}: names of {cls!r} must be a non-empty list of non-empty strings")
    if (not isinstance(templates, list) or not templates
            or not all(isinstance(t, str) and one_placeholder(t) for t in templates)):
        raise DataError(f"{path}: 'templates' must be a non-empty list of strings, each with one '{{}}'")
    return Wording({c: list(names[c]) for c in FASHION_CLASSES}, tuple(templates))


def check_disjoint(train: Wording, heldout: Wording) -> None:
    """Raise :class:`DataError` when a held-out name or template is also a training one (after :func:`name_key`
    / :func:`template_key`), or when a name is given to two classes."""
    def owners(w: Wording) -> dict[str, str]:
        out: dict[str, str] = {}
        for cls, ns in w.names.items():
            for n in ns:
                k = name_key(n)
                if out.setdefault(k, cls) != cls:
                    raise DataError(f"name {n!r} is given to both {out[k]!r} and {cls!r}")
        return out

    tr, ho = owners(train), owners(heldout)
    shared = sorted(set(tr) & set(ho))
    if shared:
        raise DataError(f"held-out names also in training (keys): {shared}")
    shared_t = sorted({template_key(t) for t in train.templates} & {template_key(t) for t in heldout.templates})
    if shared_t:
        raise DataError(f"held-out templates also in training: {shared_t}")


# ------------------------------------------------------------------------------------------ sampling
class CaptionSampler:
    """All training captions of a wording (class-major, then name, then template) and, per training example,
    one of its class's captions: a name drawn uniformly from the class's names and a template drawn uniformly.

    >>> s = CaptionSampler(Wording({"a": ["x", "y"], "b": ["z"]}, ("{}.", "a {}")), ("a", "b"))
    >>> s.captions
    ['x.', 'a x', 'y.', 'a y', 'z.', 'a z']
    >>> idx = s.sample(torch.tensor([1, 0]), torch.Generator().manual_seed(0))
    >>> s.label_of[idx].tolist()
    [1, 0]
    """

    def __init__(self, wording: Wording, classes: tuple[str, ...]):
        missing = [c for c in classes if c not in wording.names]
        if missing:
            raise DataError(f"the wording has no names for the classes {missing}")
        self.n_templates = len(wording.templates)
        self.captions: list[str] = []
        starts, counts = [], []
        for c in classes:
            starts.append(len(self.captions))
            counts.append(len(wording.names[c]))
            self.captions += wording.captions(c)
        self.start, self.n_names = torch.tensor(starts), torch.tensor(counts)
        self.label_of = torch.repeat_interleave(torch.arange(len(classes)), self.n_names * self.n_templates)

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Caption indices, one per label (``labels``: class indices), drawn with ``generator``."""
        name = (torch.rand(len(labels), generator=generator) * self.n_names[labels]).long()
        template = torch.randint(self.n_templates, (len(labels),), generator=generator)
        return self.start[labels] + name * self.n_templates + template


def heldout_label_sets(heldout: Wording, classes: tuple[str, ...]) -> list[list[str]]:
    """The held-out evaluation's label sets: set j names each class by its j-th held-out name (cycling
    through a class's names when it has fewer), as a user would type one label per class.

    >>> heldout_label_sets(Wording({"a": ["x", "y"], "b": ["z"]}, ("{}",)), ("a", "b"))
    [['x', 'z'], ['y', 'z']]
    """
    n = max(len(heldout.names[c]) for c in classes)
    return [[heldout.names[c][j % len(heldout.names[c])] for c in classes] for j in range(n)]


def prompts_of(labels: list[str], templates: tuple[str, ...]) -> list[str]:
    """Label-major prompts: every template for each label (the layout ``average_templates`` reads)."""
    return [t.format(label) for label in labels for t in templates]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.wording", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {WORDINGS / 'fashion_mnist_train.json'}")
    p.add_argument("--wordnet", default=str(WORDNET_DIR), help="folder of WordNet's index.noun and data.noun")
    args = p.parse_args(argv)
    heldout = load_wording("heldout")
    train = generate_training_wording(WordNet(args.wordnet), heldout)
    check_disjoint(train, heldout)
    text = json.dumps({"source": "generated by python -m training.wording --write from WordNet 3.0 (wordnet-base)",
                       "names": train.names, "templates": list(train.templates)}, indent=1) + "\n"
    if args.write:
        (WORDINGS / "fashion_mnist_train.json").write_text(text, encoding="utf-8")
    print(text, end="")
    n = sum(len(v) for v in train.names.values())
    print(f"{n} names, {len(train.templates)} templates, {n * len(train.templates)} captions")
    return 0


__all__ = ["CaptionSampler", "FASHION_SOURCES", "TRAIN_TEMPLATES", "WORDINGS", "WordNet", "Wording",
           "check_disjoint", "generate_training_wording", "heldout_label_sets", "load_wording", "name_key",
           "one_placeholder", "plural", "prompts_of", "template_key"]

if __name__ == "__main__":
    raise SystemExit(main())
