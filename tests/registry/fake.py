"""A fake OCI registry for pull tests: the real Distribution protocol, plus injected faults.

``FakeRegistry`` serves ``/v2/``, manifests (GET, HEAD) and blobs (GET, HEAD, one byte range per
request) from memory, with optional bearer-token or basic auth, on a free 127.0.0.1 port from a
background thread. A second server on another port (``storage``) plays the object store that
blob redirects point to. Faults from ``tests.registry.faults`` change single responses and count
how often they fired; every request is recorded (never the credential) for assertions.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from tests.registry import faults
from tests.registry.bodies import send_blob
from tests.registry.layout import REF_NAME, Content, build_image, digest_of
from tests.registry.server import ServerThread

logger = logging.getLogger("tests.registry.fake")

FaultT = TypeVar("FaultT", bound=faults.Fault)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TOKEN_LIFETIME_S = 300
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return a response with the OCI error envelope ``{"errors": [{code, message, detail}]}``."""
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return web.json_response(body, status=status, headers=dict(headers or {}))


@dataclass(frozen=True)
class BearerAuth:
    """Docker token auth: the registry returns 401 with a challenge that points to ``/token``.

    With ``username`` and ``password`` set, the token endpoint requires those as basic
    credentials; without, it issues tokens to anyone. ``expires_in_s`` is what the token response
    states; the fake does not expire tokens by time (use the ``ExpireTokens`` fault).
    """

    username: str | None = None
    password: str | None = None
    service: str = "fake"
    expires_in_s: int = DEFAULT_TOKEN_LIFETIME_S


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic auth on every ``/v2/`` request."""

    username: str
    password: str


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, logged on arrival.

    ``authorization`` is whether the header was sent and ``auth_scheme`` is its scheme
    (``Bearer`` or ``Basic``). The credential itself is never stored. ``status`` is ``None``
    while the response is still being sent, or when the handler failed without an HTTP status.
    """

    server: str
    method: str
    path: str
    query: str
    range: str | None
    authorization: bool
    auth_scheme: str | None
    status: int | None


@dataclass
class Repository:
    """The content of one repository: blobs and manifests by digest, tags to digests."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _TokenGrant:
    repositories: frozenset[str]
    uses: int = 0


class FakeRegistry:
    """An in-memory OCI registry on 127.0.0.1 with auth, faults and a request log.

    Start it with ``start()`` or as a context manager (or use the ``fake_registry`` fixture).
    ``auth`` and faults may be changed while it runs; they apply to the next request.
    """

    def __init__(self, auth: BearerAuth | BasicAuth | None = None) -> None:
        self.auth = auth
        self.repositories: dict[str, Repository] = {}
        self.faults: list[faults.Fault] = []
        self.rejected_storage_authorization = 0
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._tokens: dict[str, _TokenGrant] = {}

        self._server = ServerThread(self._registry_app(), "fake-registry")
        self._storage = ServerThread(self._storage_app(), "fake-storage")
        self.port = self._server.port
        self.host = self._server.host
        self.url = self._server.url
        self.storage_url = self._storage.url
        self.realm = f"{self.url}/token"

    # Lifecycle.

    def start(self) -> FakeRegistry:
        self._server.start()
        try:
            self._storage.start()
        except BaseException:
            self._server.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self._server.stop()
        finally:
            self._storage.stop()

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Content.

    def repository(self, name: str) -> Repository:
        return self.repositories.setdefault(name, Repository())

    def add_blob(self, repo: str, data: bytes) -> str:
        """Store a blob in ``repo`` and return its sha256 digest."""
        digest = digest_of(data)
        self.repository(repo).blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, data: bytes, media_type: str, tag: str | None = None) -> str:
        """Store a manifest (served with ``media_type``), optionally tag it, return its digest."""
        digest = digest_of(data)
        repository = self.repository(repo)
        repository.manifests[digest] = (media_type, data)
        if tag is not None:
            repository.tags[tag] = digest
        return digest

    def add_content(self, repo: str, tag: str | None, content: Content) -> Content:
        """Store a built image, index or artifact with every blob and child manifest."""
        manifest_types = content.manifest_media_types()
        for digest, data in content.blobs.items():
            if digest in manifest_types:
                self.add_manifest(repo, data, manifest_types[digest])
            else:
                self.repository(repo).blobs[digest] = data
        self.add_manifest(repo, content.manifest, content.media_type, tag)
        return content

    def add_image(
        self, repo: str, tag: str | None, layers: Sequence[bytes], **image_options: Any
    ) -> Content:
        """Build an image from uncompressed layers (see ``build_image``) and store it."""
        return self.add_content(repo, tag, build_image(layers, **image_options))

    def add_layout(self, repo: str, layout_dir: Path) -> dict[str, str]:
        """Serve every blob and manifest of an OCI layout from ``repo``; return tag to digest.

        Manifests are found by walking ``index.json`` and nested indexes, and their media types
        come from the descriptors that point at them. Every blob is read into memory.
        """
        repository = self.repository(repo)
        blob_root = layout_dir / "blobs"
        for path in sorted(blob_root.glob("*/*")):
            repository.blobs[f"{path.parent.name}:{path.name}"] = path.read_bytes()
        index = json.loads((layout_dir / "index.json").read_text())
        tags: dict[str, str] = {}
        pending = list(index.get("manifests") or [])
        while pending:
            entry = pending.pop()
            digest = entry["digest"]
            data = repository.blobs.get(digest)
            if data is None:
                continue
            repository.manifests[digest] = (entry["mediaType"], data)
            tag = (entry.get("annotations") or {}).get(REF_NAME)
            if tag is not None:
                repository.tags[tag] = digest
                tags[tag] = digest
            nested = json.loads(data).get("manifests") or []
            pending.extend(nested)
        return tags

    def blob(self, digest: str) -> bytes | None:
        """Return a blob from any repository (the storage server is not per repository)."""
        for repository in self.repositories.values():
            if digest in repository.blobs:
                return repository.blobs[digest]
        return None

    # Faults and the request log.

    def add_fault(self, fault: FaultT) -> FaultT:
        """Add a fault and return it, so the test can read ``fault.fired`` later."""
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request so far, registry and storage, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def blob_requests(self, digest: str, method: str | None = "GET") -> list[RecordedRequest]:
        """Return requests for one blob on either server; ``method=None`` matches any method."""
        return [
            request
            for request in self.requests
            if request.path.endswith(f"/{digest}")
            and "/manifests/" not in request.path
            and (method is None or request.method == method)
        ]

    def multi_range_requests(self) -> list[RecordedRequest]:
        """Return requests whose Range header asked for more than one range."""
        return [request for request in self.requests if request.range and "," in request.range]

    def _record(self, request: web.Request, server: str) -> int:
        """Log a request on arrival and return its position, for ``_set_status`` later."""
        authorization = request.headers.get("Authorization")
        scheme = authorization.split(" ", 1)[0] if authorization else None
        record = RecordedRequest(
            server=server,
            method=request.method,
            path=request.path,
            query=request.query_string,
            range=request.headers.get("Range"),
            authorization=authorization is not None,
            auth_scheme=scheme,
            status=None,
        )
        with self._lock:
            self._requests.append(record)
            return len(self._requests) - 1

    def _set_status(self, position: int, status: int | None) -> None:
        with self._lock:
            # A test may have cleared the log while the request was running.
            if position < len(self._requests):
                self._requests[position] = replace(self._requests[position], status=status)

    def _middleware(self, server: str) -> Any:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            position = self._record(request, server)
            status: int | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as error:
                status = error.status
                raise
            finally:
                self._set_status(position, status)

        return record

    def _firing(
        self,
        kind: str,
        target: str,
        method: str,
        has_range: bool,
        classes: tuple[type[faults.Fault], ...],
    ) -> list[faults.Fault]:
        # Only faults of `classes` are asked, so each request counts once toward a fault's skip.
        return [
            fault
            for fault in self.faults
            if isinstance(fault, classes) and fault.applies(kind, target, method, has_range)
        ]

    # The registry application.

    def _registry_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("registry")])
        app.router.add_get("/token", self._token)
        app.router.add_route("GET", "/v2/", self._base)
        app.router.add_route("GET", r"/v2/{name:.+}/manifests/{reference}", self._manifest)
        app.router.add_route("HEAD", r"/v2/{name:.+}/manifests/{reference}", self._manifest)
        app.router.add_route("GET", r"/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_route("HEAD", r"/v2/{name:.+}/blobs/{digest}", self._blob)
        return app

    def _challenge(self, repo: str | None, error: str | None = None) -> web.Response:
        auth = self.auth
        if isinstance(auth, BasicAuth):
            header = 'Basic realm="fake"'
        else:
            service = auth.service if auth is not None else "fake"
            header = f'Bearer realm="{self.realm}",service="{service}"'
            if repo is not None:
                header += f',scope="repository:{repo}:pull"'
            if error is not None:
                header += f',error="{error}"'
        return error_response(
            401,
            "UNAUTHORIZED",
            "authentication required",
            [{"Type": "repository", "Name": repo, "Action": "pull"}] if repo else None,
            headers={"WWW-Authenticate": header, **API_VERSION_HEADER},
        )

    def _authorize(self, request: web.Request, repo: str | None) -> web.Response | None:
        """Return a 401 response when the request may not read ``repo``, else ``None``."""
        auth = self.auth
        if auth is None:
            return None
        header = request.headers.get("Authorization", "")
        if isinstance(auth, BasicAuth):
            if header == basic_header(auth.username, auth.password):
                return None
            return self._challenge(repo)
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        grant = self._tokens.get(token) if token else None
        if token is None or grant is None:
            return self._challenge(repo, "invalid_token" if token else None)
        if repo is not None and repo not in grant.repositories:
            return self._challenge(repo, "insufficient_scope")
        grant.uses += 1
        for fault in self.faults:
            if (
                isinstance(fault, faults.ExpireTokens)
                and request.method in fault.methods
                and grant.uses > fault.after_requests
                and (fault.times is None or fault.fired < fault.times)
            ):
                fault.fire()
                del self._tokens[token]
                return self._challenge(repo, "invalid_token")
        return None

    async def _token(self, request: web.Request) -> web.Response:
        auth = self.auth
        if not isinstance(auth, BearerAuth):
            return error_response(404, "UNSUPPORTED", "this registry does not issue tokens")
        if auth.username is not None:
            expected = basic_header(auth.username, auth.password or "")
            if request.headers.get("Authorization") != expected:
                return error_response(
                    401,
                    "UNAUTHORIZED",
                    "invalid username or password",
                    headers={"WWW-Authenticate": 'Basic realm="fake-token"'},
                )
        if request.query.get("service", auth.service) != auth.service:
            return error_response(400, "DENIED", f"unknown service {request.query['service']!r}")
        repositories = set()
        for scope in request.query.getall("scope", []):
            match = re.fullmatch(r"repository:([^:]+):([a-z,*]+)", scope)
            if match is None:
                return error_response(400, "DENIED", f"invalid scope {scope!r}")
            if "pull" in match.group(2).split(",") or match.group(2) == "*":
                repositories.add(match.group(1))
        token = secrets.token_urlsafe(24)
        self._tokens[token] = _TokenGrant(frozenset(repositories))
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": auth.expires_in_s}
        )

    async def _base(self, request: web.Request) -> web.Response:
        refused = self._authorize(request, None)
        if refused is not None:
            return refused
        return web.json_response({}, headers=API_VERSION_HEADER)

    def _status_fault(
        self, kind: str, target: str, request: web.Request
    ) -> web.StreamResponse | None:
        has_range = "Range" in request.headers
        for fault in self._firing(kind, target, request.method, has_range, faults.STATUS_FAULTS):
            if isinstance(fault, faults.TooManyRequests):
                fault.fire()
                return error_response(
                    429,
                    "TOOMANYREQUESTS",
                    "too many requests",
                    headers={"Retry-After": str(fault.retry_after_s)},
                )
            if isinstance(fault, faults.ServiceUnavailable):
                fault.fire()
                headers = {}
                if fault.retry_after_s is not None:
                    headers["Retry-After"] = str(fault.retry_after_s)
                return error_response(503, "UNAVAILABLE", "service unavailable", headers=headers)
            if isinstance(fault, faults.ManifestServerError):
                fault.fire()
                return error_response(fault.status, "UNKNOWN", "injected manifest error")
            if isinstance(fault, faults.RedirectToStorage):
                fault.fire()
                signature = secrets.token_hex(8)
                location = f"{self.storage_url}/storage/{target}?X-Amz-Signature={signature}"
                return web.Response(status=307, headers={"Location": location})
        return None

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        reference = request.match_info["reference"]
        refused = self._authorize(request, name)
        if refused is not None:
            return refused
        repository = self.repositories.get(name)
        if repository is None:
            return error_response(404, "NAME_UNKNOWN", "repository name not known", {"name": name})
        faulted = self._status_fault(faults.MANIFEST, reference, request)
        if faulted is not None:
            return faulted
        digest = repository.tags.get(reference, reference)
        if digest not in repository.manifests:
            return error_response(
                404, "MANIFEST_UNKNOWN", "manifest unknown", {"reference": reference}
            )
        # NOTE: the Accept header is not checked. Every manifest is served with its stored media
        # type, where a real registry may return 404 or convert a type the client did not accept.
        media_type, data = repository.manifests[digest]
        headers = {
            "Content-Type": media_type,
            "Docker-Content-Digest": digest,
            "Content-Length": str(len(data)),
            **API_VERSION_HEADER,
        }
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        digest = request.match_info["digest"]
        refused = self._authorize(request, name)
        if refused is not None:
            return refused
        repository = self.repositories.get(name)
        if repository is None:
            return error_response(404, "NAME_UNKNOWN", "repository name not known", {"name": name})
        data = repository.blobs.get(digest)
        if data is None:
            return error_response(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        faulted = self._status_fault(faults.BLOB, digest, request)
        if faulted is not None:
            return faulted

        if request.method == "HEAD":
            return web.Response(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(data)),
                    "Docker-Content-Digest": digest,
                    "Accept-Ranges": "bytes",
                    **API_VERSION_HEADER,
                }
            )

        body_faults = self._firing(
            faults.BLOB, digest, "GET", "Range" in request.headers, faults.BODY_FAULTS
        )
        return await send_blob(request, data, digest, body_faults)

    # The storage application (redirect target).

    def _storage_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("storage")])
        app.router.add_get("/storage/{digest}", self._storage_blob)
        return app

    async def _storage_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if "Authorization" in request.headers:
            # Object stores reject a presigned URL that also carries a registry credential.
            self.rejected_storage_authorization += 1
            logger.warning("storage request for %s carried an Authorization header", digest)
            return web.Response(
                status=400,
                content_type="application/xml",
                text="<Error><Code>InvalidArgument</Code>"
                "<Message>Only one auth mechanism allowed</Message></Error>",
            )
        data = self.blob(digest)
        if data is None:
            return web.Response(status=404, text="NoSuchKey")
        body_faults = self._firing(
            faults.BLOB, digest, "GET", "Range" in request.headers, faults.BODY_FAULTS
        )
        return await send_blob(request, data, digest, body_faults)


def basic_header(username: str, password: str) -> str:
    """Return the ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
