"""The default connection count is one value from the native layer up to the command line."""

from __future__ import annotations

import inspect

import pytest

from warmstart import LayerStore, _native
from warmstart.cli import build_parser
from warmstart.replay.profile import Profile
from warmstart.store import DEFAULT_CONNECTIONS


def test_default_connections_is_the_native_default() -> None:
    assert DEFAULT_CONNECTIONS == _native.DEFAULT_CONNECTIONS
    assert DEFAULT_CONNECTIONS >= 1


@pytest.mark.parametrize("method", ["_pull", "_fetch", "_pull_blob", "_pull_and_unpack"])
def test_native_signature_default_matches(method: str) -> None:
    signature = inspect.signature(getattr(_native.LayerStore, method))
    assert signature.parameters["connections"].default == DEFAULT_CONNECTIONS


@pytest.mark.parametrize("method", ["pull", "fetch"])
def test_python_signature_default_matches(method: str) -> None:
    signature = inspect.signature(getattr(LayerStore, method))
    assert signature.parameters["connections"].default == DEFAULT_CONNECTIONS


@pytest.mark.parametrize("command", ["pull", "fetch", "calibrate"])
def test_cli_default_matches(command: str) -> None:
    argv = [command, "localhost:5000/app:v1"]
    if command == "fetch":
        argv = [command, "http://127.0.0.1:1/blob", "--digest", "sha256:" + "0" * 64]
    arguments = build_parser(argv).parse_args(argv)
    assert arguments.connections == DEFAULT_CONNECTIONS


def test_profile_default_matches() -> None:
    fields = {field.name: field for field in Profile.__dataclass_fields__.values()}
    assert fields["connections"].default == DEFAULT_CONNECTIONS
