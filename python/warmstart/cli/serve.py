"""``warmstart serve``: run the websocket and HTTP service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from warmstart.cli.usage import UsageError, parse_path
from warmstart.engine import Engine
from warmstart.mirror.server import listen_failed
from warmstart.server import ServeConfig, load_config, make_app
from warmstart.server.auth import read_token
from warmstart.server.clock import WallClock
from warmstart.server.errors import ConfigError

__all__ = ["add_parser", "parse_listen"]

logger = logging.getLogger("warmstart.server")

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:8080`` for IPv6); raise ``ConfigError`` if invalid."""
    host, separator, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not separator or not host or not 0 <= port <= 65535:
        raise ConfigError(
            f"invalid listen address {text!r}; expected HOST:PORT such as {DEFAULT_LISTEN}"
        )
    return host, port


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="receive metric streams over a websocket and serve decisions",
        description="Run the scaling engine behind a websocket and HTTP API "
        "(see docs/serve.md). Stops cleanly on SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--config",
        type=parse_path,
        default=None,
        metavar="FILE",
        help="TOML configuration; without it the service starts with no endpoints",
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help=f"address to listen on (default: server.listen or {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--token-file",
        type=parse_path,
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer <token>' with the token in FILE",
    )
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    try:
        config = _read_config(arguments.config) if arguments.config else ServeConfig()
        host, port = parse_listen(arguments.listen or config.listen or DEFAULT_LISTEN)
        token_file = arguments.token_file or config.token_file
        token = read_token(token_file) if token_file is not None else None
    except ConfigError as error:
        # An invalid --config file, --listen address or --token-file: fixed on the command
        # line or in the file it names, so a usage error.
        raise UsageError(str(error)) from None
    return asyncio.run(_serve(config, host, port, token))


def _read_config(path: Path) -> ServeConfig:
    try:
        return load_config(path)
    except OSError as error:
        raise ConfigError(f"cannot read --config {path}: {error.strerror}") from None


async def _serve(config: ServeConfig, host: str, port: int, token: bytes | None) -> int:
    engine = Engine(config.endpoints, clock=WallClock(), ingest=config.ingest)
    app = make_app(engine, token=token, settings=config.settings, documents=config.documents)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=config.settings.shutdown_timeout_s
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            raise listen_failed(error, host, port) from None
        logger.info("listening on %s:%d (authentication %s)", host, port, "on" if token else "off")
        print(f"warmstart serve: listening on http://{host}:{port}", flush=True)
        await stop.wait()
        logger.info("stop signal received")
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        # Stops listening first, then drains the application (1001 to every socket).
        await runner.cleanup()
    return 0
