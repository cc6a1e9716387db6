"""A TCP proxy on 127.0.0.1 that limits every connection to a fixed rate, for mirror benchmarks.

Run: ``python benchmarks/mirror_throttle.py LISTEN_PORT TARGET_PORT MIB_PER_S``. It prints
``ready`` when listening and, on SIGTERM, the bytes it relayed from the target and exits.
The limit applies per connection and per direction, like a remote registry that caps each
download stream.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

# Bytes relayed per write; small enough that the rate stays smooth within a second.
SLICE = 64 * 1024


async def relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float, counter: list[int]
) -> None:
    started = time.monotonic()
    sent = 0
    try:
        while data := await reader.read(SLICE):
            writer.write(data)
            await writer.drain()
            sent += len(data)
            counter[0] += len(data)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(listen_port: int, target_port: int, mib_per_s: float) -> None:
    rate = mib_per_s * (1 << 20)
    downloaded = [0]
    uploaded = [0]

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            relay(client_reader, target_writer, rate, uploaded),
            relay(target_reader, client_writer, rate, downloaded),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    print(downloaded[0], flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
