"""Exceptions raised by the service::

    WarmstartError
    └── ServerError
        ├── ConfigError (ValueError)    an invalid configuration file or endpoint document
        └── FrameError (ValueError)     a websocket frame that cannot be processed at all

A ``FrameError`` becomes an error frame on the socket; it never closes the connection.
"""

from __future__ import annotations

from warmstart.errors import WarmstartError


class ServerError(WarmstartError):
    """Base class of the service's exceptions."""


class ConfigError(ServerError, ValueError):
    """A configuration file or endpoint document is invalid; the message names the key."""


class FrameError(ServerError, ValueError):
    """A frame is malformed; ``code`` is the machine-readable error code sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
