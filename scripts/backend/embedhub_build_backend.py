"""The project's PEP 517 build backend: setuptools' ``build_meta``, less one notice of ``pip install -e .``.

The wheel maps the folders training/, export/ and demos/ to ``embedhub.training``, ``embedhub.export`` and
``embedhub.demos`` (``[tool.setuptools] package-dir``). setuptools installs such a layout in editable mode
through a meta path finder and says so with an ``InformationOnly`` notice ("Editable installation. Please be
careful with folders in your working directory with the same name as your package"), which pip prints as a
``BuildBackendWarning`` box on every editable install. That notice is dropped here; every other message of
setuptools, warnings included, comes through unchanged.

    pip install -e .        # pyproject.toml: build-backend = "embedhub_build_backend"
"""

from __future__ import annotations

import warnings
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every hook of setuptools' backend
from setuptools.warnings import InformationOnly


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    """setuptools' ``build_editable`` without its "Editable installation." notice.

    >>> build_editable("dist")  # doctest: +SKIP
    'embedhub-0.1.0-0.editable-py3-none-any.whl'
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
