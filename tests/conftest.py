"""Shared fixtures: temporary stores, the real image fixtures, and external tools."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.paths import IN_CI, REPOSITORY, SHARED_DATA
from warmstart import LayerStore

pytest_plugins = ["tests.registry.plugin"]

__all__ = ["IN_CI", "REPOSITORY", "SHARED_DATA", "require_tool"]


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "store")


@pytest.fixture(scope="session")
def images() -> Path:
    """The real OCI fixtures (``shared/data/images``); CI fails instead of skipping without them."""
    path = SHARED_DATA / "images"
    if not path.is_dir():
        message = f"real image fixtures not found at {path}; set WARMSTART_SHARED_DATA"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_tool(name: str) -> str:
    """Return the path of an external program; in CI a missing program fails the test."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; .ci/run installs it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
