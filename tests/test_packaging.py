"""Project rules that can break silently: lint, the wheel's top-level names, library import direction."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff not installed")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


#: deprecated shims that forward an old library path to where its code moved (one release), by file
DEPRECATED_SHIMS = {Path("embedhub/losses.py"): "embedhub.training.losses"}


def test_library_never_imports_training_export_or_demos():
    offenders = []
    for path in (ROOT / "embedhub").rglob("*.py"):
        if path.relative_to(ROOT) in DEPRECATED_SHIMS:
            source = path.read_text()
            assert "DeprecationWarning" in source and DEPRECATED_SHIMS[path.relative_to(ROOT)] in source, path
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module if node.level == 0 else "." * node.level + node.module]
            for name in names:
                top = name.lstrip(".").split(".")
                if top[0] in {"training", "export", "demos"} or top[:2] in (
                    ["embedhub", "training"], ["embedhub", "export"], ["embedhub", "demos"]
                ):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_wheel_installs_only_the_embedhub_top_level_name(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(tmp_path.glob("embedhub-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"embedhub"}, tops
    for sub in ("training", "export", "demos"):
        assert f"embedhub/{sub}/__init__.py" in names
