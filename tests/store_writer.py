"""A child process for the crash and concurrency tests: puts blobs into a store until killed.

Usage: python -m tests.store_writer STORE MODE SEED
  MODE "loop": put 32 MiB blobs derived from SEED one after another, printing each digest.
  MODE "same": put one 32 MiB blob derived from SEED once and print the outcome as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys

from warmstart import LayerStore

BLOB_SIZE = 32 << 20


def blob_chunks(seed: int, size: int = BLOB_SIZE):  # type: ignore[no-untyped-def]
    """Yield `size` bytes of SHA-256 counter-mode output: incompressible and reproducible."""
    block = 1 << 20
    for index in range(size // block):
        digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
        yield digest * (block // len(digest))


def blob_digest(seed: int) -> str:
    hasher = hashlib.sha256()
    for chunk in blob_chunks(seed):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def main() -> None:
    store = LayerStore(sys.argv[1])
    mode, seed = sys.argv[2], int(sys.argv[3])
    if mode == "loop":
        while True:
            info = store.put_stream(blob_chunks(seed), size=BLOB_SIZE)
            print(info.digest, flush=True)
            seed += 1
    info = store.put_stream(blob_chunks(seed), digest=blob_digest(seed), size=BLOB_SIZE)
    print(json.dumps({"digest": info.digest, "created": info.created}), flush=True)


if __name__ == "__main__":
    main()
