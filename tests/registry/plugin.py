"""Pytest fixtures for the registry test infrastructure.

Register them with ``pytest_plugins = ["tests.registry.plugin"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.fake import FakeRegistry
from tests.registry.real import REGISTRY_BINARY, RealRegistry, RegistryRepository, repository_name

_serials = itertools.count(1)


@pytest.fixture(scope="session")
def real_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    """A ``docker-registry`` on 127.0.0.1 shared by the session, stopped at its end.

    Without the program (and skopeo, which pushes) the tests that use it skip, or fail in CI.
    """
    for program in (REGISTRY_BINARY, "skopeo"):
        if shutil.which(program) is None:
            message = f"{program} is not installed; .ci/run installs it with apt-get"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    registry = RealRegistry.start(tmp_path_factory.mktemp("registry"))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def registry_repo(
    real_registry: RealRegistry, request: pytest.FixtureRequest
) -> RegistryRepository:
    """A fresh repository in the session's real registry, named after the test."""
    real_registry.check_alive()
    return RegistryRepository(real_registry, repository_name(request.node.name, next(_serials)))


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """An anonymous fake registry on a free loopback port, stopped after the test.

    Configure auth or faults on it before use; tests that need auth from the start can build
    their own with ``FakeRegistry(auth=...)`` as a context manager.
    """
    with FakeRegistry() as registry:
        yield registry


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    """An empty directory for an OCI layout written by a test."""
    path = tmp_path / "layout"
    path.mkdir()
    return path
