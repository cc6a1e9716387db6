"""Faults the fake registry can inject, each counted in ``fired`` every time it applies.

A fault applies to requests of the kinds (``"blob"`` or ``"manifest"``) and methods it covers.
When ``digest`` is set, it applies only to that blob digest. For manifest faults ``digest`` is
the manifest reference (a tag or a digest) as the client wrote it in the URL. ``skip`` lets that
many matching requests through first, and ``times`` caps how many requests it applies to after
them (``None`` means every one).

Status faults answer before any content is read:
- ``TooManyRequests``: 429, ``Retry-After`` and the ``TOOMANYREQUESTS`` error envelope.
- ``ServiceUnavailable``: 503 (twice by default), then the request succeeds.
- ``ManifestServerError``: 500 (or another status) for a manifest GET or HEAD.
- ``RedirectToStorage``: 307 to the storage server on another port, which serves the blob and
  rejects (400) any request that carries an ``Authorization`` header.

Body faults change what a blob GET sends, on the registry or on the storage server:
- ``IgnoreRange``: 200 with the whole blob, no ``Content-Range``.
- ``WrongRangeStart``: 206 whose bytes start ``shift`` bytes after the requested start.
- ``NoContentRange``: 206 with the requested bytes and no ``Content-Range`` header.
- ``TruncateBody``: full headers, ``after_bytes`` of body, then the connection is closed.
- ``EmptyBody``: headers with a non-zero ``Content-Length`` and no body before the close.
- ``WrongContentLength``: ``Content-Length`` off by ``delta`` from the bytes that belong there.
- ``WrongBytes``: the right length but one byte flipped, so the digest does not match.
- ``Stall``: ``after_bytes`` of body, then a pause of ``seconds`` before the rest.
- ``Pause``: ``after_bytes`` of body, then nothing until the test sets ``release``.

Auth faults:
- ``ExpireTokens``: a bearer token is refused (401 with a fresh challenge) once it has been
  used for ``after_requests`` registry requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

BLOB = "blob"
MANIFEST = "manifest"


@dataclass
class Fault:
    """Base of all faults: where it applies, how often, and how often it fired."""

    digest: str | None = None
    times: int | None = None
    skip: int = 0
    fired: int = field(default=0, init=False)
    # Matching requests seen so far, the skipped ones included.
    seen: int = field(default=0, init=False)

    kinds: ClassVar[frozenset[str]] = frozenset({BLOB})
    methods: ClassVar[frozenset[str]] = frozenset({"GET"})
    # Body faults that only make sense for a request carrying a Range header set this.
    needs_range: ClassVar[bool] = False

    def applies(self, kind: str, target: str, method: str, has_range: bool) -> bool:
        """Return whether this fault covers the request; it has not fired yet when it does."""
        if kind not in self.kinds or method not in self.methods:
            return False
        if self.digest is not None and self.digest != target:
            return False
        if self.needs_range and not has_range:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        return self.times is None or self.fired < self.times

    def fire(self) -> None:
        self.fired += 1


# Status faults.


@dataclass
class TooManyRequests(Fault):
    """429 with ``Retry-After`` (seconds) for matching blob and manifest requests."""

    retry_after_s: int = 1
    kinds: ClassVar[frozenset[str]] = frozenset({BLOB, MANIFEST})
    methods: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD"})


@dataclass
class ServiceUnavailable(Fault):
    """503 for the first ``times`` (default 2) matching blob and manifest requests."""

    times: int | None = 2
    retry_after_s: int | None = None
    kinds: ClassVar[frozenset[str]] = frozenset({BLOB, MANIFEST})
    methods: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD"})


@dataclass
class ManifestServerError(Fault):
    """An error status (default 500) for manifest GET and HEAD; ``digest`` is the reference."""

    status: int = 500
    kinds: ClassVar[frozenset[str]] = frozenset({MANIFEST})
    methods: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD"})


@dataclass
class RedirectToStorage(Fault):
    """307 from the registry to the same blob on the storage server (another port)."""


# Body faults.


@dataclass
class IgnoreRange(Fault):
    """200 with the whole blob for a request that asked for a range."""

    needs_range: ClassVar[bool] = True


@dataclass
class WrongRangeStart(Fault):
    """206 whose body starts ``shift`` bytes after the requested start.

    With ``honest_header`` the ``Content-Range`` states the range actually sent, so a client that
    checks it can notice. Without it the header repeats the requested range, and only the digest
    check catches the wrong bytes.
    """

    shift: int = 1
    honest_header: bool = True
    needs_range: ClassVar[bool] = True


@dataclass
class NoContentRange(Fault):
    """206 with the requested bytes but without the ``Content-Range`` header it requires."""

    needs_range: ClassVar[bool] = True


@dataclass
class TruncateBody(Fault):
    """Send the headers for the whole response, ``after_bytes`` of body, then close."""

    after_bytes: int = 0


@dataclass
class EmptyBody(Fault):
    """Send the headers with the real, non-zero ``Content-Length`` and close with no body."""


@dataclass
class WrongContentLength(Fault):
    """Declare ``Content-Length`` as the true length plus ``delta`` (may be negative).

    A smaller declaration sends that many bytes as a complete response. A larger one sends every
    byte there is and then closes the connection short of the declared length.
    """

    delta: int = -1


@dataclass
class WrongBytes(Fault):
    """Flip one byte of the blob (at ``offset``, default the middle) before any range is cut."""

    offset: int | None = None


@dataclass
class Stall(Fault):
    """Send ``after_bytes`` of body, pause ``seconds``, then send the rest."""

    seconds: float = 5.0
    after_bytes: int = 0


@dataclass
class Pause(Fault):
    """Send ``after_bytes`` of body, then wait until the test sets ``release``.

    The server sets ``paused`` when the wait begins, so a test can inspect the client while the
    rest of the body is held back. After ``timeout_s`` without a release the body goes on, so a
    failed test cannot leave the server waiting.
    """

    after_bytes: int = 0
    timeout_s: float = 25.0
    paused: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    release: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


# Auth faults.


@dataclass
class ExpireTokens(Fault):
    """Refuse a bearer token with 401 and a fresh challenge after ``after_requests`` uses.

    Applies to every registry request under ``/v2/``; ``digest`` is ignored.
    """

    after_requests: int = 1
    kinds: ClassVar[frozenset[str]] = frozenset({BLOB, MANIFEST})
    methods: ClassVar[frozenset[str]] = frozenset({"GET", "HEAD"})


STATUS_FAULTS = (TooManyRequests, ServiceUnavailable, ManifestServerError, RedirectToStorage)
BODY_FAULTS = (
    IgnoreRange,
    WrongRangeStart,
    NoContentRange,
    TruncateBody,
    EmptyBody,
    WrongContentLength,
    WrongBytes,
    Stall,
    Pause,
)
