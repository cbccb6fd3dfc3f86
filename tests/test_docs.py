"""The documentation: README.md and docs/*.md.

- Every fenced code block runs as written: ``python`` blocks with this project's Python and ``bash`` blocks with
  bash (``embedhub`` and ``python`` resolve to this environment's), in a scratch folder, one process per page so
  that a page's blocks build on each other as a reader's session does, offline, on the packaged models.
  ``text`` blocks show output and do not run. A block that cannot run here carries, on the line above it,
  ``<!-- not-run: REASON; covered by tests/test_x.py::test_y -->`` naming a test that exists.
- The site builds with ``mkdocs build --strict``: a missing page, a broken link or anchor, or an API reference
  that names something that does not exist fails the build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python": "python", "bash": "bash"}
SHOWN = {"text"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^<!-- not-run: (?P<reason>[^;]+); covered by (?P<test>tests/[\w/]+\.py)::(?P<name>\w+) -->$")
README_MAX_LINES = 250


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, the line of its opening fence (1-based), language, code and marker."""

    page: Path
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, each with the ``<!-- not-run: ... -->`` line right above it, if any.

    >>> [b.lang for b in code_blocks(ROOT / "README.md")][:1]  # doctest: +SKIP
    ['bash']
    """
    lines = page.read_text(encoding="utf-8").split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.name}:{i + 1}: a code block that is never closed"
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        blocks.append(Block(page, i + 1, lang, code, above if above.startswith("<!-- not-run") else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def test_every_block_is_run_or_marked_with_a_test_that_exists():
    """Every block has a language that runs or shows output; a not-run marker gives a reason and names a test
    function that exists; output blocks carry no marker."""
    assert len(PAGES) > 5 and ALL_BLOCKS
    problems = []
    for block in ALL_BLOCKS:
        if block.lang not in RUN and block.lang not in SHOWN:
            problems.append(f"{block.where}: fence language {block.lang!r}; expected one of {sorted({*RUN, *SHOWN})}")
        if block.marker is None:
            continue
        if block.lang in SHOWN:
            problems.append(f"{block.where}: a not-run marker on a {block.lang} block, which never runs")
        marker = MARKER.match(block.marker)
        if not marker:
            problems.append(f"{block.where}: malformed marker {block.marker!r}; expected "
                            "'<!-- not-run: REASON; covered by tests/test_x.py::test_y -->'")
            continue
        test_file = ROOT / marker["test"]
        if not test_file.is_file():
            problems.append(f"{block.where}: {marker['test']} does not exist")
        elif not re.search(rf"^def {marker['name']}\(", test_file.read_text(encoding="utf-8"), re.M):
            problems.append(f"{block.where}: {marker['test']} has no test {marker['name']}")
    assert not problems, "\n".join(problems)


# Runs the blocks it is given (a JSON list) in order: python in one shared namespace, bash in a child process; stops
# at the first failure, printing which block failed. Line numbers in tracebacks are the page's.
DRIVER = r"""
import json, subprocess, sys, traceback
namespace = {"__name__": "__main__"}
for block in json.load(open(sys.argv[1], encoding="utf-8")):
    print(f"=== {block['where']} ({block['lang']})", flush=True)
    if block["lang"] == "python":
        try:
            exec(compile("\n" * block["line"] + block["code"], block["page"], "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED {block['where']}", flush=True)
            sys.exit(1)
        sys.stdout.flush()
    else:
        rc = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]]).returncode
        if rc:
            print(f"FAILED {block['where']}: exit status {rc}", flush=True)
            sys.exit(1)
print("=== all blocks ran", flush=True)
"""


def _runnable(page: Path) -> list[Block]:
    return [b for b in code_blocks(page) if b.lang in RUN and b.marker is None]


def _skip_without_stsb() -> None:
    """Skip, naming the command that gets it, when STS-B is nowhere embedhub looks for it (a page whose blocks
    use STS-B cannot run without it)."""
    try:
        from embedhub.data import stsb_dir
    except ImportError:
        return  # the module is part of what the page documents: the page runs, and fails
    try:
        stsb_dir()
    except FileNotFoundError:
        pytest.skip("STS-B not found: run `embedhub data stsb` to download it once")


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=lambda p: p.name)
def test_code_blocks_run_as_written(page, tmp_path):
    """The page's runnable blocks, in order, in a scratch folder, with this environment's ``python`` and
    ``embedhub`` first on PATH, offline (``HF_HUB_OFFLINE=1``: nothing may download)."""
    blocks = _runnable(page)
    if any("stsb" in b.code for b in blocks):
        _skip_without_stsb()
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"where": b.where, "page": b.page.name, "line": b.line, "lang": RUN[b.lang],
                                 "code": b.code} for b in blocks]), encoding="utf-8")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", DRIVER, str(spec)], cwd=scratch, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=900)
    assert run.returncode == 0 and "=== all blocks ran" in run.stdout, run.stdout[-6000:]
    ran = re.findall(r"^=== (\S+) \(", run.stdout, re.M)
    assert ran == [b.where for b in blocks]


def test_readme_is_a_map_whose_links_exist():
    """README.md stays under its length, keeps the install table's sizes column, and every relative link or
    image in it names a file of the repository (links into docs/ are checked by the site build too)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.split("\n")) < README_MAX_LINES
    assert "| profile | command | what it gives | venv size |" in text
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        if not (ROOT / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_docs_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` of mkdocs.yml: every page of docs/ in the navigation, every link and anchor
    resolves, and the API reference renders the public modules from their docstrings."""
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.skip("mkdocs and mkdocstrings are not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-6000:]
    for page in (ROOT / "docs").glob("*.md"):
        name = "" if page.stem == "index" else page.stem + "/"
        assert (site / name / "index.html").is_file(), f"{page.name} is not in the built site"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("embedhub.load", "embedhub.EmbeddingModel.encode", "embedhub.data.read_stsb",
                 "embedhub.formats.register_format", "embedhub.modules.register_tower", "embedhub.hub.push_folder",
                 "embedhub.modules.load_image", "embedhub.store.sha256_file"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"


def test_docstring_examples_render_as_code():
    """The API reference's docstring filter: ``>>>`` examples with their output become Python code blocks (output
    like ``[[1, 3]]`` would otherwise be read as a Markdown link), and Sphinx roles become code spans."""
    pytest.importorskip("griffe", reason="griffe (mkdocstrings-python) is not installed: pip install -e '.[docs]'")
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from griffe_doctest import doctest_to_markdown
    finally:
        sys.path.remove(str(ROOT / "docs"))
    text = "Batches, see :func:`plan`.\n\n>>> plan([3, 1])\n[[1, 3]]\n\nMore."
    assert doctest_to_markdown(text) == (
        "Batches, see `plan`.\n\n```python\n>>> plan([3, 1])\n[[1, 3]]\n```\n\nMore.")
