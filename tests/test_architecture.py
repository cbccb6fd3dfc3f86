"""The library's layout as a contract: package exports that resolve, a command line that starts without torch.

The layering itself (imports run one way, no circles, no private names across modules, consumers on the public
API) is checked by tests/test_layers.py.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["embedhub", "embedhub.modules", "embedhub.formats", "embedhub.hub", "embedhub.store", "embedhub.jobs"]


def _type_checking_names(package: str) -> set[str]:
    init = ROOT / package.replace(".", "/") / "__init__.py"
    names: set[str] = set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            names |= {a.asname or a.name for imp in node.body for a in imp.names}
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_is_listed_once_and_resolves(package):
    mod = importlib.import_module(package)
    listed = _type_checking_names(package)
    assert set(mod.__all__) == listed, f"{package}: __all__ and the TYPE_CHECKING imports differ: " \
                                       f"{sorted(set(mod.__all__) ^ listed)}"
    for name in mod.__all__:
        value = getattr(mod, name)
        assert name in dir(mod)
        # the object is the one its defining module holds (no copies)
        home = importlib.import_module(getattr(value, "__module__", None) or package)
        assert getattr(home, name, value) is value or not hasattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        mod.not_a_name  # noqa: B018


def test_public_api_of_the_package():
    import embedhub

    errors = {n for n in embedhub.__all__ if n.endswith("Error")}
    assert set(embedhub.__all__) - errors == {
        "load", "EmbeddingModel", "list_models", "register_model", "model_entry", "ModelEntry", "embed_corpus",
        "EmbedJobResult", "read_embeddings", "write_embeddings", "Fingerprint", "MultiProcessPool",
        "quantize_embeddings",
    }
    assert issubclass(embedhub.InputError, embedhub.EmbedhubError)


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, check=True, timeout=120)
    return set(out.stdout.split())


def test_help_and_import_stay_free_of_torch():
    # `embedhub --help` lists every command, plugins (export, train, demo) included, without importing torch
    after_help = _imported_after("from embedhub.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
                                 "    pass")
    assert "embedhub.cli.parser" in after_help
    assert "torch" not in after_help and "numpy" not in after_help
    after_import = _imported_after("import embedhub, embedhub.modules, embedhub.formats, embedhub.hub, "
                                   "embedhub.store, embedhub.jobs")
    assert "torch" not in after_import
    # and the first use of a name imports what it needs
    assert "torch" in _imported_after("import embedhub\nembedhub.EmbeddingModel")


#: what the extension points exported before the library was split into layers: every name still imports
#: from the same path (a user's `from embedhub.modules import OpenCLIPTower` keeps working)
BEFORE_LAYERS = {
    "embedhub.modules": "ACTIVATIONS ConfigView Dense HFCLIPTower HFTextPreprocessor Head ImageConfig "
                        "ImagePreprocessor ModelFolder Normalize OpenCLIPTextPreprocessor OpenCLIPTower POOLING_MODES "
                        "Pooling TIMM_KWARGS "
                        "TextPreprocessor TimmImageTower Tower TransformersTextTower build_open_clip is_saveable "
                        "load_preprocessor open_clip_image_config register_tower tower_class tower_kinds "
                        "unregister_tower",
    "embedhub.formats": "ConfigView Format LoadOptions ModelFolder ModelParts can_save_torch check_writable detect "
                        "find_safetensors format_names get_format load_strict model_files read_safetensors "
                        "register_format save_embedhub unregister_format",
    "embedhub.hub": "PUSH_DEFAULT_MESSAGE Result card_results check_names linked_images pipeline_tag_for push_folder "
                    "read_card resolve_token upload_files usage_snippet write_card",
}


@pytest.mark.parametrize("package", sorted(BEFORE_LAYERS))
def test_names_users_hold_still_import_from_their_old_paths(package):
    mod = importlib.import_module(package)
    missing = [n for n in BEFORE_LAYERS[package].split() if n not in mod.__all__ or not hasattr(mod, n)]
    assert not missing, f"{package} lost {missing}"
