"""``warmstart store``: import, export, list, verify and collect the layer store."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from warmstart import BlobInfo, Descriptor, ImportReport, LayerStore, _native
from warmstart.cli.interrupt import interruptible
from warmstart.cli.output import format_bytes, print_json, print_table
from warmstart.cli.usage import UsageError, check_with, input_problem, parse_path
from warmstart.errors import StoreError

__all__ = ["add_parser", "default_store_path", "parse_tag"]


def parse_tag(text: str) -> str:
    """Check a tag of the store, such as ``llm:v1``; returns it unchanged."""
    return check_with(_native.parse_tag_string, text)


def default_store_path() -> Path:
    """Return ``$WARMSTART_STORE``, or ``$XDG_CACHE_HOME/warmstart/store`` (``~/.cache/...``)."""
    if configured := os.environ.get("WARMSTART_STORE"):
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "warmstart" / "store"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "store", help="manage the local layer store", description="Manage the local layer store."
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
        )
        sub.add_argument(
            "--store",
            type=parse_path,
            default=None,
            help="store directory (default: $WARMSTART_STORE or ~/.cache/warmstart/store)",
        )
        sub.add_argument("--json", action="store_true", help="print one JSON object for scripts")
        return sub

    sub = action("import", "import images from an OCI layout directory or a `docker save` archive")
    sub.add_argument(
        "source", type=parse_import_source, help="OCI layout directory or .tar archive"
    )
    sub.add_argument(
        "--tag",
        action="append",
        type=parse_tag,
        default=None,
        help="layout: import only this tag (repeatable); archive: tag the image with this name",
    )
    sub.set_defaults(run=run_import)

    sub = action("export", "export tagged images to an OCI layout directory")
    sub.add_argument("tags", nargs="*", help="tags to export (default: every tag)")
    sub.add_argument("--to", type=parse_path, required=True, help="target OCI layout directory")
    sub.set_defaults(run=run_export)

    sub = action(
        "ls",
        "list tags with their image size (the compressed config and layer blobs, every "
        "platform in the store for an index), or blobs with --blobs",
    )
    sub.add_argument("--blobs", action="store_true", help="list every blob instead of the tags")
    sub.set_defaults(run=run_ls)

    sub = action("verify", "re-hash every blob and check every tagged image is complete")
    sub.add_argument("--quarantine", action="store_true", help="move corrupt blobs to quarantine/")
    sub.set_defaults(run=run_verify)

    sub = action("gc", "remove blobs unreachable from index.json and stale partial downloads")
    sub.add_argument("--dry-run", action="store_true", help="report without removing anything")
    sub.add_argument(
        "--grace-period",
        type=seconds,
        default=3600.0,
        metavar="SECONDS",
        help="keep unreachable blobs younger than this (default: 3600)",
    )
    sub.add_argument(
        "--ingest-max-age",
        type=seconds,
        default=86400.0,
        metavar="SECONDS",
        help="remove partial downloads idle longer than this (default: 86400)",
    )
    sub.set_defaults(run=run_gc)

    sub = action("du", "show the disk space the store uses")
    sub.set_defaults(run=run_du)


def seconds(text: str) -> float:
    """Parse a duration in seconds for argparse: a finite number, at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be a finite number >= 0, got {text!r}")
    return value


def open_store(arguments: argparse.Namespace, *, must_exist: bool = False) -> LayerStore:
    """Open the store named by ``--store`` or the default; with ``must_exist``, a directory
    that is not a store yet is an error instead of a new, empty store (a mistyped path)."""
    path: Path = arguments.store or default_store_path()
    if must_exist and not (path / "oci-layout").is_file():
        raise StoreError(
            f"no layer store at {path}; check --store or $WARMSTART_STORE, or create one with "
            "`warmstart store import` or `warmstart pull`"
        )
    return LayerStore(path)


def descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    return {
        "tag": descriptor.tag,
        "media_type": descriptor.media_type,
        "digest": descriptor.digest,
        "size": descriptor.size,
    }


def blob_json(blob: BlobInfo) -> dict[str, Any]:
    return {"digest": blob.digest, "size": blob.size}


def print_import_report(arguments: argparse.Namespace, verb: str, report: ImportReport) -> None:
    if arguments.json:
        print_json(
            {
                "images": [descriptor_json(image) for image in report.images],
                "blobs_added": report.blobs_added,
                "bytes_added": report.bytes_added,
                "blobs_present": report.blobs_present,
            }
        )
        return
    for image in report.images:
        print(f"{verb} {image.tag or '(untagged)'}  {image.digest}")
    print(
        f"{report.blobs_added} blobs added ({format_bytes(report.bytes_added)}), "
        f"{report.blobs_present} already present"
    )


def parse_import_source(text: str) -> Path:
    """Parse the source of ``store import``: a readable directory or regular file."""
    path = parse_path(text)
    expected = "an OCI layout directory or a `docker save` archive"
    problem = input_problem(path, expected=expected, directory_allowed=True)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return path


def run_import(arguments: argparse.Namespace) -> int:
    store = open_store(arguments)
    source: Path = arguments.source
    tags: list[str] | None = arguments.tag
    # The parser checked that the source is a readable directory or regular file.
    if source.is_dir():
        report = interruptible(lambda: store.import_layout(source, tags=tags))
    else:
        if tags is not None and len(tags) > 1:
            raise UsageError("an archive import takes at most one --tag")
        tag = tags[0] if tags else None
        report = interruptible(lambda: store.import_archive(source, tag=tag))
    print_import_report(arguments, "imported", report)
    return 0


def run_export(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    report = interruptible(lambda: store.export_layout(arguments.to, tags=arguments.tags or None))
    print_import_report(arguments, "exported", report)
    return 0


def run_ls(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    if arguments.blobs:
        blobs = store.list()
        if arguments.json:
            print_json({"blobs": [blob_json(blob) for blob in blobs]})
        else:
            print_table(["DIGEST", "SIZE"], [[b.digest, format_bytes(b.size)] for b in blobs])
        return 0
    tags = [(tag, image_size(store, tag.digest)) for tag in store.tags()]
    if arguments.json:
        print_json({"tags": [{**descriptor_json(tag), "image_size": size} for tag, size in tags]})
    else:
        rows = [
            [t.tag, t.media_type, t.digest[:19], "-" if size is None else format_bytes(size)]
            for t, size in tags
        ]
        print_table(["TAG", "MEDIA TYPE", "DIGEST", "IMAGE SIZE"], rows)
    return 0


def image_size(store: LayerStore, digest: str) -> int | None:
    """Return the bytes of the config and layer blobs the manifest ``digest`` lists, as the
    registry sends them (compressed), each blob once.

    For an index, the platform manifests in the store count and the others do not, because a
    pull stores only the platform it selects. Return None when the manifest is not in the
    store or is not JSON.
    """
    blobs: dict[str, int] = {}
    pending, seen = [digest], set()
    while pending:
        manifest = pending.pop()
        if manifest in seen:
            continue
        seen.add(manifest)
        try:
            document = json.loads(store.read(manifest))
        except (StoreError, ValueError):
            if manifest == digest:
                return None
            continue
        if not isinstance(document, dict):
            if manifest == digest:
                return None
            continue
        for child in descriptors(document, "manifests"):
            pending.append(child["digest"])
        for blob in descriptors(document, "config", "layers", "blobs"):
            blobs[blob["digest"]] = blob["size"]
    return sum(blobs.values())


def descriptors(document: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    """Return the well-formed descriptors (a string digest, a size >= 0) under ``keys``."""
    found = []
    for key in keys:
        value = document.get(key)
        for item in value if isinstance(value, list) else [value]:
            if (
                isinstance(item, dict)
                and isinstance(item.get("digest"), str)
                and isinstance(item.get("size"), int)
                and item["size"] >= 0
            ):
                found.append(item)
    return found


def run_verify(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    report = interruptible(lambda: store.verify(quarantine=arguments.quarantine))
    if arguments.json:
        print_json(
            {
                "ok": report.ok,
                "checked_blobs": report.checked_blobs,
                "checked_bytes": report.checked_bytes,
                "problems": [
                    {
                        "kind": p.kind,
                        "digest": p.digest,
                        "path": p.path,
                        "actual_digest": p.actual_digest,
                        "expected_size": p.expected_size,
                        "actual_size": p.actual_size,
                        "referenced_by": p.referenced_by,
                        "detail": p.detail,
                    }
                    for p in report.problems
                ],
                "quarantined": report.quarantined,
            }
        )
    else:
        for problem in report.problems:
            print(f"{problem.kind}: {problem.digest or problem.path}{describe_problem(problem)}")
        checked = f"{report.checked_blobs} blobs ({format_bytes(report.checked_bytes)})"
        print(f"checked {checked}: {plural(len(report.problems), 'problem')}")
        if report.quarantined:
            print(f"moved {plural(len(report.quarantined), 'file')} to quarantine/")
    return 0 if report.ok else 1


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_problem(problem: Any) -> str:
    if problem.kind == "digest_mismatch":
        return f" (content hashes to {problem.actual_digest})"
    if problem.kind == "truncated":
        return f" ({problem.actual_size} of {problem.expected_size} bytes)"
    if problem.kind == "size_mismatch":
        return f" ({problem.actual_size} bytes, manifest declares {problem.expected_size})"
    if problem.kind == "missing":
        return f" (referenced by {problem.referenced_by})"
    if problem.kind == "invalid_manifest":
        return f" ({problem.detail})"
    return " (not a regular file named by its digest)"


def run_gc(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    report = interruptible(
        lambda: store.gc(
            grace_period_s=arguments.grace_period,
            ingest_max_age_s=arguments.ingest_max_age,
            dry_run=arguments.dry_run,
        )
    )
    if arguments.json:
        print_json(
            {
                "dry_run": arguments.dry_run,
                "removed_blobs": [blob_json(blob) for blob in report.removed_blobs],
                "removed_blob_bytes": report.removed_blob_bytes,
                "removed_ingest_files": report.removed_ingest_files,
                "removed_ingest_bytes": report.removed_ingest_bytes,
                "kept_blobs": report.kept_blobs,
                "kept_blob_bytes": report.kept_blob_bytes,
            }
        )
        return 0
    verb = "would remove" if arguments.dry_run else "removed"
    print(
        f"{verb} {len(report.removed_blobs)} blobs ({format_bytes(report.removed_blob_bytes)}) "
        f"and {len(report.removed_ingest_files)} partial files "
        f"({format_bytes(report.removed_ingest_bytes)}); "
        f"kept {report.kept_blobs} blobs ({format_bytes(report.kept_blob_bytes)})"
    )
    return 0


def run_du(arguments: argparse.Namespace) -> int:
    store = open_store(arguments, must_exist=True)
    usage = store.usage()
    if arguments.json:
        print_json(
            {
                "store": os.fspath(store.root),
                "blobs": usage.blobs,
                "blob_bytes": usage.blob_bytes,
                "ingest_files": usage.ingest_files,
                "ingest_bytes": usage.ingest_bytes,
                "quarantine_files": usage.quarantine_files,
                "quarantine_bytes": usage.quarantine_bytes,
            }
        )
        return 0
    print(f"store {store.root}")
    print_table(
        ["AREA", "FILES", "SIZE"],
        [
            ["blobs", usage.blobs, format_bytes(usage.blob_bytes)],
            ["ingest", usage.ingest_files, format_bytes(usage.ingest_bytes)],
            ["quarantine", usage.quarantine_files, format_bytes(usage.quarantine_bytes)],
        ],
    )
    return 0
