"""Hand-built layers and images for the unpack tests, and a model of applying layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from warmstart import LayerStore

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
MTIME = 1_600_000_000


@dataclass(frozen=True)
class Member:
    """One tar entry; names and link targets are written as given, without checks."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    devmajor: int = 0
    devminor: int = 0


def tar_bytes(members: Iterable[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = member.mode
            info.mtime = MTIME
            info.uid = member.uid
            info.gid = member.uid
            info.linkname = member.link
            info.devmajor = member.devmajor
            info.devminor = member.devminor
            info.size = len(member.data)
            archive.addfile(info, io.BytesIO(member.data) if member.data else None)
    return buffer.getvalue()


def put_image(store: LayerStore, tag: str, layers: list[bytes], media_type: str = GZIP) -> str:
    """Store an image of uncompressed tar `layers` (bottom first) under `tag`; return its digest."""
    descriptors = []
    diff_ids = []
    for layer in layers:
        blob = gzip.compress(layer, compresslevel=1) if media_type == GZIP else layer
        info = store.put(blob)
        descriptors.append({"mediaType": media_type, "digest": info.digest, "size": info.size})
        diff_ids.append("sha256:" + hashlib.sha256(layer).hexdigest())
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    config_info = store.put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_info.digest,
                "size": config_info.size,
            },
            "layers": descriptors,
        }
    ).encode()
    digest = store.put(manifest).digest
    store.tag(tag, digest)
    return digest


@dataclass
class Model:
    """A root filesystem: path to ("dir", mode), ("file", data, mode) or ("link", target)."""

    entries: dict[str, tuple[object, ...]] = field(default_factory=dict)

    def remove(self, path: str) -> None:
        for key in [k for k in self.entries if k == path or k.startswith(path + "/")]:
            del self.entries[key]

    def apply(self, layer: bytes) -> None:
        """Apply one uncompressed layer with OCI whiteout rules."""
        written: set[str] = set()
        with tarfile.open(fileobj=io.BytesIO(layer)) as archive:
            for member in archive.getmembers():
                name = os.path.normpath(member.name)
                if name == ".":
                    continue
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    prefix = parent + "/" if parent else ""
                    for key in list(self.entries):
                        if key.startswith(prefix) and key not in written and key in self.entries:
                            self.remove(key)
                    continue
                if base.startswith(".wh."):
                    hidden = f"{parent}/{base[4:]}" if parent else base[4:]
                    if hidden not in written:
                        self.remove(hidden)
                    continue
                existing = self.entries.get(name)
                if member.isdir():
                    if existing is None or existing[0] != "dir":
                        self.remove(name)
                    self.entries[name] = ("dir", member.mode)
                elif member.issym():
                    self.remove(name)
                    self.entries[name] = ("link", member.linkname)
                elif member.islnk():
                    self.remove(name)
                    self.entries[name] = self.entries[member.linkname]
                else:
                    self.remove(name)
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    self.entries[name] = ("file", extracted.read(), member.mode)
                parts = name.split("/")
                written.update("/".join(parts[: i + 1]) for i in range(len(parts)))


def scan(root: Path) -> dict[str, tuple[object, ...]]:
    """Read a directory tree into the form of `Model.entries`."""
    entries: dict[str, tuple[object, ...]] = {}
    for directory, directories, files in os.walk(root):
        for name in directories + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                entries[key] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[key] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                entries[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return entries


def leave_interrupted_run(target: Path) -> None:
    """Add to an unpacked `target` the staging directories an interrupted run leaves."""
    for partial in (target / "layers" / ".partial-p-0123", target / ".partial-rootfs"):
        (partial / "usr").mkdir(parents=True)
        (partial / "usr" / "half-written").write_bytes(b"staged by another run")


def target_state(target: Path) -> dict[str, tuple[object, ...]]:
    """Map every path below `target`, except the lock, to its inode, mtime and content."""
    state: dict[str, tuple[object, ...]] = {}
    for path in sorted(target.rglob("*")):
        if path.name == ".lock":
            continue
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        state[str(path.relative_to(target))] = (info.st_ino, info.st_mtime_ns, content)
    return state
