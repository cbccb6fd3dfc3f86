"""The layering checker (scripts/check_layers.py) on small package trees planted in tmp_path.

Each test writes a tree with one broken rule and asserts the checker reports that rule at that
import; the clean tree reports nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cl = _load_checker()

#: a library ``pkg`` of three layers and a peer, one installed consumer ``app`` and a script folder ``bench``
RULES = cl.Rules(
    library="pkg",
    layers={"pkg.low": 0, "pkg._private": 0, "pkg.mid": 1, "pkg.side": 1, "pkg.top": 2, "pkg.shim": 3, "pkg": 4},
    public=("pkg", "pkg.low"),
    consumers={"app": "pkg.app", "bench": "bench"},
    shims={"pkg.shim": ("pkg.app.losses",)},
)

CLEAN = {
    "pkg/__init__.py": "from pkg.top import run\n__version__ = '1'\n",
    "pkg/low.py": "helper = 1\n__all__ = ['helper']\n",
    "pkg/mid/__init__.py": "from ..low import helper\n",
    "pkg/mid/core.py": "from . import tools\nfrom .tools import make\n\n\ndef f():\n    from pkg.low import helper\n",
    "pkg/mid/leaf.py": "x = 1\n",
    "pkg/mid/tools.py": "import os\nfrom pkg.low import __all__\n\n\ndef make():\n    return os.sep\n",
    "pkg/side.py": "import numpy\nfrom pkg import low\n",
    "pkg/top.py": "from typing import TYPE_CHECKING\nfrom pkg.mid.core import f\nif TYPE_CHECKING:\n"
    "    from pkg.side import numpy\n\n\ndef run():\n    return f()\n",
    "pkg/shim.py": "from pkg.app.losses import loss  # the deprecated shim\n",
    "app/__init__.py": "",
    "app/losses.py": "from pkg.low import helper as loss\n",
    "app/_util.py": "import pkg\n",
    "app/main.py": "from pkg import run\nfrom pkg.low import helper\nfrom app._util import pkg\n"
    "from pkg.app._util import pkg as p\nfrom ._util import pkg as q\nfrom . import losses\n",
    "bench/harness.py": "import json\n",
    "bench/speed.py": "from harness import json\nfrom pkg.app.main import run\n",
}


def plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def kinds(found: list) -> list[tuple[str, str, int]]:
    return [(v.kind, v.module, v.line) for v in found]


def test_a_clean_tree_passes(tmp_path):
    assert cl.check(plant(tmp_path, CLEAN), RULES) == []


@pytest.mark.parametrize(
    "text, line",
    [
        ("x = 1\nfrom pkg.mid.leaf import x\n", 2),  # module level
        ("def g():\n    import pkg.mid.leaf\n", 2),  # in a function
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.mid import leaf\n", 3),  # type-checking
    ],
    ids=["module-level", "in-function", "type-checking"],
)
def test_an_upward_import_is_reported(tmp_path, text, line):
    found = cl.check(plant(tmp_path, {**CLEAN, "pkg/low.py": text}), RULES)
    assert kinds(found) == [("upward", "pkg.low", line)]
    assert found[0].message == "imports pkg.mid.leaf (layer 1, a higher layer) from layer 0"


def test_a_relative_upward_import_is_resolved(tmp_path):
    tree = {**CLEAN, "pkg/mid/leaf.py": "def make():\n    from ..top import run\n"}
    found = cl.check(plant(tmp_path, tree), RULES)
    assert kinds(found) == [("upward", "pkg.mid.leaf", 2)]
    assert "imports pkg.top (layer 2" in found[0].message


def test_a_peer_of_the_same_layer_is_reported(tmp_path):
    found = cl.check(plant(tmp_path, {**CLEAN, "pkg/side.py": "from pkg.mid import helper\n"}), RULES)
    assert kinds(found) == [("upward", "pkg.side", 1)]
    assert "a peer" in found[0].message


def test_a_module_outside_the_table_is_reported(tmp_path):
    found = cl.check(plant(tmp_path, {**CLEAN, "pkg/stray.py": "x = 1\n"}), RULES)
    assert kinds(found) == [("unlayered", "pkg.stray", 1)]


@pytest.mark.parametrize(
    "files, path",
    [
        ({"pkg/mid/a.py": "from pkg.mid import b\n", "pkg/mid/b.py": "def f():\n    from pkg.mid.a import x\n"},
         "pkg.mid.a -> pkg.mid.b -> pkg.mid.a"),
        ({"pkg/mid/a.py": "from .b import y\n", "pkg/mid/b.py": "import pkg.mid.c\n",
          "pkg/mid/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.mid.a import x\n"},
         "pkg.mid.a -> pkg.mid.b -> pkg.mid.c -> pkg.mid.a"),
        ({"bench/a.py": "from b import f\n", "bench/b.py": "def f():\n    import a\n"},
         "bench.a -> bench.b -> bench.a"),
    ],
    ids=["two", "three", "script-siblings"],
)  # fmt: skip
def test_an_import_circle_is_reported_with_its_path(tmp_path, files, path):
    found = cl.check(plant(tmp_path, {**CLEAN, **files}), RULES)
    assert [v.kind for v in found] == ["circle"]
    assert found[0].message == f"import circle: {path}"
    assert found[0].line == 1


def test_a_circle_through_a_larger_knot_names_its_size(tmp_path):
    files = {"pkg/mid/a.py": "import pkg.mid.b\nimport pkg.mid.c\n", "pkg/mid/b.py": "import pkg.mid.a\n",
             "pkg/mid/c.py": "import pkg.mid.b\n"}  # fmt: skip
    found = cl.check(plant(tmp_path, {**CLEAN, **files}), RULES)
    assert [v.message for v in found] == ["import circle: pkg.mid.a -> pkg.mid.b -> pkg.mid.a (3 modules in this knot)"]


def test_another_modules_private_name_is_reported(tmp_path):
    tree = {**CLEAN, "pkg/low.py": "_helper = 1\n", "pkg/mid/tools.py": "x = 1\nfrom pkg.low import _helper\n"}
    found = cl.check(plant(tmp_path, tree), RULES)
    assert kinds(found) == [("private-name", "pkg.mid.tools", 2)]
    assert "_helper of pkg.low" in found[0].message


@pytest.mark.parametrize(
    "text, target",
    [
        ("from pkg._private import x\n", "pkg._private"),  # a private module of the library
        ("import pkg.mid.core\n", "pkg.mid.core"),  # a library module that is not public
        ("from pkg.mid import helper\n", "pkg.mid"),
        ("from pkg.app._util import x\n", "pkg.app._util"),  # another consumer's private module
    ],
    ids=["private-module", "non-public-module", "non-public-package", "other-consumers-private"],
)
def test_a_consumer_importing_beyond_the_public_api_is_reported(tmp_path, text, target):
    tree = {**CLEAN, "pkg/_private.py": "x = 1\n", "bench/speed.py": "import json\n" + text}
    found = cl.check(plant(tmp_path, tree), RULES)
    assert kinds(found) == [("not-public", "bench.speed", 2)]
    assert target in found[0].message


@pytest.mark.parametrize("text", ["from app.losses import loss\n", "import pkg.app.losses\n", "from pkg import app\n"])
def test_the_library_importing_a_consumer_is_reported(tmp_path, text):
    found = cl.check(plant(tmp_path, {**CLEAN, "pkg/mid/tools.py": text}), RULES)
    assert kinds(found) == [("consumer", "pkg.mid.tools", 1)]


def test_only_the_whitelisted_shim_may_import_its_consumer_module(tmp_path):
    tree = {**CLEAN, "pkg/shim.py": "from pkg.app.losses import loss\nfrom pkg.app.main import run\n"}
    assert kinds(cl.check(plant(tmp_path, tree), RULES)) == [("consumer", "pkg.shim", 2)]


# ---------------------------------------------------------------------------- the project's own table and the CLI
EMBEDHUB = {
    "embedhub/__init__.py": "from embedhub.errors import EmbedhubError\n",
    "embedhub/errors.py": "class EmbedhubError(Exception):\n    pass\n",
    "embedhub/modules/__init__.py": "from embedhub.modules.towers import Tower\n",
    "embedhub/modules/towers.py": "from embedhub.errors import EmbedhubError\nTower = object\n",
    "embedhub/hub/__init__.py": "from embedhub.modules import Tower\n",
    "embedhub/store/__init__.py": "from embedhub.errors import EmbedhubError\n",
    "embedhub/losses.py": "from embedhub.training.losses import clip_loss  # deprecated\n",
    "training/__init__.py": "",
    "training/losses.py": "from embedhub.modules import Tower\nclip_loss = Tower\n",
}


def test_the_project_rules_pass_a_tree_in_the_target_layout(tmp_path):
    assert cl.check(plant(tmp_path, EMBEDHUB), cl.RULES) == []


def test_the_project_rules_report_hub_and_store_importing_each_other(tmp_path):
    tree = {**EMBEDHUB, "embedhub/store/__init__.py": "def f():\n    from embedhub.hub import x\n"}
    assert kinds(cl.check(plant(tmp_path, tree), cl.RULES)) == [("upward", "embedhub.store", 2)]


def test_the_cli_prints_one_line_per_violation_and_exits_1(tmp_path, capsys):
    tree = {**EMBEDHUB, "embedhub/errors.py": "from embedhub.modules import Tower\n",
            "embedhub/modules/towers.py": "from embedhub.modules import x\n"}  # fmt: skip
    assert cl.main(["--root", str(plant(tmp_path, tree))]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "embedhub/errors.py:1: upward: imports embedhub.modules (layer 3, a higher layer) from layer 0",
        "embedhub/modules/__init__.py:1: circle: import circle: embedhub.modules -> embedhub.modules.towers"
        " -> embedhub.modules",
    ]
    assert cl.main(["--root", str(plant(tmp_path, EMBEDHUB))]) == 0


def test_the_cli_refuses_a_root_without_the_library(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cl.main(["--root", str(tmp_path)])
    assert exc.value.code == 2 and "no embedhub/ folder" in capsys.readouterr().err


def test_a_file_that_is_not_python_is_named(tmp_path, capsys):
    root = plant(tmp_path, {**EMBEDHUB, "embedhub/errors.py": "def broken(:\n"})
    with pytest.raises(ValueError, match=r"errors\.py: not readable as Python source"):
        cl.check(root, cl.RULES)
    with pytest.raises(SystemExit) as exc:
        cl.main(["--root", str(root)])
    assert exc.value.code == 2 and "errors.py: not readable as Python source" in capsys.readouterr().err


def test_the_picture_as_dot_text(tmp_path):
    out = tmp_path / "layers.dot"
    assert cl.main(["--root", str(plant(tmp_path, EMBEDHUB)), "--dot", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph layers {") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    assert '"embedhub.hub" -> "embedhub.modules";' in text and '"embedhub.training" -> "embedhub.modules";' in text
    assert '"embedhub.modules" -> "embedhub.hub";' not in text


def test_the_picture_as_svg(tmp_path):
    out = tmp_path / "layers.svg"
    cl.main(["--root", str(plant(tmp_path, EMBEDHUB)), "--dot", str(out)])
    svg = ET.parse(out).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    labels = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"errors", "modules", "hub", "store", "training", "embedhub"} <= labels


def test_the_project_keeps_its_layers():
    """The real tree: embedhub in layers without circles or private imports, training/export/demos/benchmarks on
    the public API, the library importing none of them (the embedhub.losses shim aside)."""
    found = cl.check(ROOT, cl.RULES)
    assert not found, "\n".join(str(v) for v in found)
    mods, _ = cl.import_graph(ROOT, cl.RULES)
    assert len([m for m in mods if m.startswith("embedhub.")]) > 40  # the tree was read, not an empty folder
