"""``warmstart mirror``: serve the store as a read-only OCI registry that pulls through."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from warmstart.cli.pull import parse_chunk_size, parse_connections, parse_seconds
from warmstart.cli.store import open_store
from warmstart.cli.usage import UsageError, parse_path
from warmstart.mirror import Mirror, Upstream, serve

__all__ = ["add_parser", "parse_listen"]


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not host or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r}; use HOST:PORT with a port from 0 to 65535"
        )
    return host.strip("[]"), int(port)


def parse_upstream(text: str) -> Upstream:
    try:
        return Upstream.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def read_token(path: Path) -> str:
    """Return the first line of a token file; raises ``ValueError`` when it is empty."""
    token = path.read_text().strip().splitlines()[0:1]
    if not token or not token[0].strip():
        raise ValueError(f"token file {path} is empty")
    return token[0].strip()


def token_from_file(path: Path | None) -> str | None:
    """Read ``--token-file`` when given; an unreadable or empty file is a usage error."""
    if path is None:
        return None
    try:
        return read_token(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"invalid --token-file: {error}") from None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "mirror",
        help="serve the store as an OCI registry mirror",
        description="Serve the store as a read-only OCI registry. With --upstream, a request "
        "for something the store lacks is fetched from that registry, stored and served.",
    )
    parser.add_argument(
        "--store",
        type=parse_path,
        default=None,
        help="store directory (default: $WARMSTART_STORE or ~/.cache/warmstart/store)",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 5050),
        metavar="HOST:PORT",
        help="address to listen on (default: 127.0.0.1:5050)",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        type=parse_upstream,
        metavar="URL",
        help="registry to pull through to, e.g. https://registry-1.docker.io or "
        "http://127.0.0.1:5000 (repeatable; the first serves requests without ?ns=)",
    )
    parser.add_argument(
        "--token-file",
        type=parse_path,
        default=None,
        metavar="FILE",
        help="require every request to send 'Authorization: Bearer TOKEN', TOKEN being the "
        "first line of FILE (default: no token, read-only for anyone who can connect)",
    )
    parser.add_argument(
        "--tag-ttl",
        type=parse_seconds,
        default=60.0,
        metavar="SECONDS",
        help="serve a tag resolved upstream this long before asking again (default: 60)",
    )
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="fetch only the blobs clients request instead of every blob of a requested image; "
        "an image is tagged in the store once clients fetched all of its blobs",
    )
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=8,
        metavar="N",
        help="parallel connections per upstream host (default: 8)",
    )
    parser.add_argument(
        "--chunk-size",
        type=parse_chunk_size,
        default=16 << 20,
        metavar="SIZE",
        help="byte range per upstream request for large blobs, e.g. 16M (default: 16M)",
    )
    parser.set_defaults(run=run_mirror)


def run_mirror(arguments: argparse.Namespace) -> int:
    store = open_store(arguments)
    token = token_from_file(arguments.token_file)
    mirror = Mirror(
        store,
        upstreams=arguments.upstream,
        token=token,
        tag_ttl_s=arguments.tag_ttl,
        warm=not arguments.no_warm,
        connections=arguments.connections,
        chunk_size=arguments.chunk_size,
    )
    host, port = arguments.listen

    async def run() -> None:
        running = await serve(mirror, host, port)
        print(f"serving {store.root} on {running.url}", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stopped.set)
        try:
            await stopped.wait()
        finally:
            await running.stop()

    asyncio.run(run())
    return 0
