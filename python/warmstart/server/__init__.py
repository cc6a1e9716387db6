"""The websocket and HTTP service around the engine (``warmstart serve``).

``make_app(engine)`` returns an aiohttp application; ``load_config(path)`` reads the TOML
configuration. The message schema and the configuration format are in ``docs/serve.md``.
"""

from warmstart.server.app import make_app
from warmstart.server.clock import WallClock
from warmstart.server.config import ServeConfig, ServerSettings, endpoint_spec, load_config
from warmstart.server.errors import ConfigError, FrameError, ServerError

__all__ = [
    "ConfigError",
    "FrameError",
    "ServeConfig",
    "ServerError",
    "ServerSettings",
    "WallClock",
    "endpoint_spec",
    "load_config",
    "make_app",
]
