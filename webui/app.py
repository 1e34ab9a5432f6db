"""The search page's routes, over one ImageSearchClient:

    GET  /                              the page (static HTML) and GET /page.js, its script
    GET  /api/info                      model, random weights or not, collections, limits
    POST /api/search?top_k=&collection=&label=   an image as the body (Content-Type image/*)
                                        or as the form field "image" (multipart/form-data)
    GET  /api/search?id=&top_k=&collection=&label=   by a stored item's own vector
    GET  /api/duplicates?collection=&max_distance=&limit=   the collection's near-duplicate
                                        groups (read-only), by its gem vector when it has one
                                        ("vector"); the distance defaults to the embedder's
                                        suggestion for the head that makes that vector
    GET  /thumbnails/{collection}/{id}  a stored item's picture, scaled down (JPEG)
    POST /api/session                   {"token": ...}: a browser shows the page token once and
                                        gets a session cookie (webui.access)

With a page token configured, every /api/* route and every thumbnail needs it (401 without).

Item ids are strings in JSON: our ids are 64-bit, and JavaScript's numbers keep 53 bits.
Errors are JSON {"error": message} with the HTTP status that says what kind they are; every
imgsearch error is translated in one place (`_error_response`). gRPC calls block, so they run in
Starlette's thread pool.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from imgsearch import defaults
from imgsearch.client import ImageSearchClient
from imgsearch.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    ImageSearchError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceUnreachable,
    Unauthenticated,
    Unavailable,
    UnsupportedType,
    UploadTooLarge,
)
from imgsearch.names import check_collection_name
from imgsearch.records import DuplicateMember, Hit, SearchOptions
from webui.access import SESSION_COOKIE, PageAccess, WrongTokens
from webui.thumbnails import ThumbnailCache

logger = logging.getLogger(__name__)

IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff"}
)
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and headers around the picture in a form upload

# The page's own files only; images are ours (thumbnails) or the user's (blob: previews).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class WebConfig:
    """What the page searches by default and what it takes."""

    collection: str = defaults.COLLECTION
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES
    default_top_k: int = 20
    max_top_k: int = 100
    thumbnail_px: int = 256
    default_duplicate_groups: int = 100
    max_duplicate_groups: int = 1000
    duplicates_timeout_s: float = 600.0  # a scan of a large collection takes minutes
    token: str = ""  # the page token (webui.access); "" lets everyone who can reach the page in
    wrong_tokens_limit: int = 10  # wrong tokens from one address within the window, then 429
    wrong_tokens_window_s: float = 60.0


# One table from imgsearch's errors to HTTP statuses, most specific first. A service that
# cannot be reached, or refuses the page's own token, is the server side's problem: 503 / 502.
HTTP_STATUS_OF: list[tuple[type[ImageSearchError], int]] = [
    (UploadTooLarge, 413),
    (UnsupportedType, 415),
    (InvalidArgument, 400),
    (NotFound, 404),
    (AlreadyExists, 409),
    (FailedPrecondition, 409),
    (ResourceExhausted, 429),
    (ServiceUnreachable, 503),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
    (Unauthenticated, 502),
    (PermissionDenied, 502),
]


def _error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, ImageSearchError):
        status = next((code for cls, code in HTTP_STATUS_OF if isinstance(exc, cls)), 500)
        return JSONResponse({"error": str(exc)}, status_code=status, headers=SECURITY_HEADERS)
    logger.error("unexpected error in the search page", exc_info=exc)
    return JSONResponse(
        {"error": f"internal error ({type(exc).__name__}); see the web server's log"},
        status_code=500,
        headers=SECURITY_HEADERS,
    )


Endpoint = Callable[[Request], Awaitable[Response]]


def _json_errors(endpoint: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return _error_response(exc)

    return wrapped


class SearchPage:
    def __init__(self, client: ImageSearchClient, config: WebConfig) -> None:
        self.client = client
        self.config = config
        self.thumbnails = ThumbnailCache(size_px=config.thumbnail_px)
        self.access = PageAccess(config.token)
        self.wrong_tokens = WrongTokens(config.wrong_tokens_limit, config.wrong_tokens_window_s)
        files = resources.files("webui")
        self._page = (files / "page.html").read_text(encoding="utf-8")
        self._script = (files / "page.js").read_text(encoding="utf-8")

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page),
            Route("/page.js", self.script),
            Route("/favicon.ico", self.no_icon),
            Route("/api/session", _json_errors(self.session), methods=["POST"]),
            Route("/api/info", self._guarded(self.info)),
            Route("/api/search", self._guarded(self.search), methods=["GET", "POST"]),
            Route("/api/duplicates", self._guarded(self.duplicates)),
            Route("/thumbnails/{collection}/{item_id:int}", self._guarded(self.thumbnail)),
        ]

    def _guarded(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint` for those who show the page token; JSON errors either way."""
        inner = _json_errors(endpoint)

        async def guarded(request: Request) -> Response:
            if self.access.required:
                refused = self._too_many_guesses(request)
                if refused is not None:
                    return refused
            if self.access.allows(request):
                return await inner(request)
            if self.access.presents_credentials(request):
                self.wrong_tokens.record(_client(request))
            return JSONResponse(
                {
                    "error": "this page needs its token: type it in on the page, or send "
                    "'Authorization: Bearer <token>' (the token the page was started with, "
                    "IMGSEARCH_PAGE_TOKEN)",
                    "token_required": True,
                },
                status_code=401,
                headers={**SECURITY_HEADERS, "WWW-Authenticate": "Bearer"},
            )

        return guarded

    async def session(self, request: Request) -> Response:
        """Trade the page token for a session cookie (HttpOnly, SameSite=Strict)."""
        refused = self._too_many_guesses(request) if self.access.required else None
        if refused is not None:
            return refused
        body = await _read_body(request, 4096)
        try:
            token = json.loads(body).get("token", "")
        except (ValueError, AttributeError):
            raise InvalidArgument('send the token as JSON: {"token": "..."}') from None
        if self.access.required and not (isinstance(token, str) and self.access.matches(token)):
            self.wrong_tokens.record(_client(request))
            return JSONResponse(
                {"error": "that is not the page's token", "token_required": True},
                status_code=401,
                headers=SECURITY_HEADERS,
            )
        response = Response(status_code=204, headers=SECURITY_HEADERS)
        if self.access.required:
            response.set_cookie(
                SESSION_COOKIE,
                self.access.session_cookie,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def _too_many_guesses(self, request: Request) -> Response | None:
        """429 for an address that has sent too many wrong tokens lately, else None."""
        wait = self.wrong_tokens.wait_s(_client(request))
        if not wait:
            return None
        return JSONResponse(
            {"error": f"too many wrong tokens from this address; try again in {wait:.0f} s"},
            status_code=429,
            headers={**SECURITY_HEADERS, "Retry-After": str(max(1, round(wait)))},
        )

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self._page, headers=SECURITY_HEADERS)

    async def script(self, request: Request) -> Response:
        return Response(self._script, media_type="text/javascript", headers=SECURITY_HEADERS)

    async def no_icon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def info(self, request: Request) -> Response:
        def gather() -> dict[str, Any]:
            model = self.client.model_info()
            return {
                "model": model.model,
                "head": model.head,
                "weights": model.weights,
                "random_weights": model.random_weights,
                "collection": self.config.collection,
                "collections": [c.name for c in self.client.collections()],
                "default_top_k": self.config.default_top_k,
                "max_top_k": self.config.max_top_k,
                "max_upload_bytes": self.config.max_upload_bytes,
                "image_types": sorted(IMAGE_TYPES),
            }

        return JSONResponse(await run_in_threadpool(gather), headers=SECURITY_HEADERS)

    async def search(self, request: Request) -> Response:
        collection = self._collection(request.query_params.get("collection"))
        top_k = self._top_k(request.query_params.get("top_k"))
        labels = [label for label in request.query_params.getlist("label") if label]
        options = SearchOptions(labels=labels)
        if request.method == "GET":
            item_id = _integer(request.query_params.get("id"), "id")
            if item_id is None:
                raise InvalidArgument("GET /api/search needs ?id=<stored item id>; POST an image")

            def by_id() -> dict[str, Any]:
                hits = self.client.search_id(item_id, top_k, options=options, collection=collection)
                return self._answer(collection, {"id": str(item_id)}, hits, labels)

            answer = await run_in_threadpool(by_id)
        else:
            image, media_type = await self._upload(request)

            def by_image() -> dict[str, Any]:
                hits = self.client.search_image(
                    image, top_k, options=options, collection=collection
                )
                answer = self._answer(
                    collection, {"bytes": len(image), "type": media_type}, hits, labels
                )
                answer["random_weights"] = self.client.model_info().random_weights
                return answer

            answer = await run_in_threadpool(by_image)
        return JSONResponse(answer, headers=SECURITY_HEADERS)

    async def duplicates(self, request: Request) -> Response:
        collection = self._collection(request.query_params.get("collection"))
        max_distance = _number(request.query_params.get("max_distance"), "max_distance")
        limit = _integer(request.query_params.get("limit"), "limit")
        limit = self.config.default_duplicate_groups if limit is None else limit
        if not 1 <= limit <= self.config.max_duplicate_groups:
            raise InvalidArgument(
                f"limit must be 1..{self.config.max_duplicate_groups} groups, not {limit}"
            )

        def find() -> dict[str, Any]:
            # The collection's copy-detection vector when it has one (gem), else its own.
            vector = self.client.duplicates_vector(collection)
            distance = max_distance
            if distance is None:
                distance = self.client.suggested_duplicate_distance(collection, vector)
            groups = self.client.find_duplicates(
                distance,
                collection=collection,
                limit=limit,
                timeout_s=self.config.duplicates_timeout_s,
                vector=vector,
            )
            return {
                "collection": collection,
                "vector": vector,
                "max_distance": distance,
                "suggested": max_distance is None,
                "limit": limit,
                "groups": [
                    {"members": [self._item(collection, m) for m in group.members]}
                    for group in groups
                ],
            }

        return JSONResponse(await run_in_threadpool(find), headers=SECURITY_HEADERS)

    async def thumbnail(self, request: Request) -> Response:
        collection = self._collection(request.path_params["collection"])
        item_id: int = request.path_params["item_id"]

        def make() -> bytes:
            found = self.client.get_items([item_id], collection)
            if not found:
                raise NotFound(f"no item {item_id} in collection {collection!r}")
            what = f"item {item_id} of {collection!r}"
            return self.thumbnails.thumbnail(found[0].uri, what)

        jpeg = await run_in_threadpool(make)
        headers = {**SECURITY_HEADERS, "Cache-Control": "private, max-age=300"}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    # -- request parts ------------------------------------------------------------------------

    def _collection(self, name: str | None) -> str:
        name = name or self.config.collection
        check_collection_name(name)
        return name

    def _top_k(self, text: str | None) -> int:
        top_k = _integer(text, "top_k")
        if top_k is None:
            return self.config.default_top_k
        if not 1 <= top_k <= self.config.max_top_k:
            raise InvalidArgument(f"top_k must be 1..{self.config.max_top_k}, not {top_k}")
        return top_k

    async def _upload(self, request: Request) -> tuple[bytes, str]:
        """The uploaded picture and its media type: the body itself, or the form field
        "image". Refused when larger than max_upload_bytes or not an image type."""
        limit = self.config.max_upload_bytes
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        multipart = media_type == "multipart/form-data"
        body = await _read_body(request, limit + (MULTIPART_OVERHEAD if multipart else 0))
        if multipart:
            form_request = Request(request.scope, _replay(body))
            async with form_request.form(max_files=1, max_fields=16) as form:
                upload = form.get("image")
                if not isinstance(upload, UploadFile):
                    raise InvalidArgument("send the picture as the form field 'image'")
                body = await upload.read()
                media_type = (upload.content_type or "").lower()
        if len(body) > limit:
            raise UploadTooLarge(_too_large(len(body), limit))
        if not body:
            raise InvalidArgument("no picture in the request: send one image")
        if media_type not in IMAGE_TYPES:
            raise UnsupportedType(
                f"{media_type or 'no content type'} is not a picture type the page takes; send "
                f"one of {', '.join(sorted(IMAGE_TYPES))} (Content-Type header)"
            )
        return body, media_type

    def _answer(
        self, collection: str, query: dict[str, Any], hits: list[Hit], labels: list[str]
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "collection": collection,
            "query": query,
            "labels": labels,
            "hits": [
                {"rank": rank, **self._item(collection, hit)} for rank, hit in enumerate(hits, 1)
            ],
        }
        if not hits:
            rows = self.client.stats(collection).row_count
            answer["empty_collection"] = rows == 0
            answer["message"] = (
                f"the collection {collection!r} is empty: add pictures with "
                f"`imgsearch ingest FOLDER --collection {collection}`"
                if rows == 0
                else f"no stored picture has the label {' or '.join(labels)}"
                if labels
                else "no hits"
            )
        return answer

    @staticmethod
    def _item(collection: str, found: Hit | DuplicateMember) -> dict[str, Any]:
        """A hit or a group member as the page shows it."""
        return {
            "id": str(found.id),  # 64-bit ids do not fit JavaScript's numbers
            "label": found.label,
            "distance": found.distance,
            "name": PurePosixPath(found.uri).name if found.uri else "",
            "uri": found.uri,
            "thumbnail": f"/thumbnails/{collection}/{found.id}",
        }


def create_app(client: ImageSearchClient, config: WebConfig | None = None) -> Starlette:
    return Starlette(routes=SearchPage(client, config or WebConfig()).routes())


def _integer(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be a whole number, not {text[:40]!r}") from None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _number(text: str | None, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be a number, not {text[:40]!r}") from None
    if not math.isfinite(value) or value == 0:
        raise InvalidArgument(f"{name} must be a finite non-zero distance, not {text[:40]!r}")
    return value


def _too_large(size: int, limit: int) -> str:
    return (
        f"the upload is {size / 1e6:.1f} MB; the page takes pictures up to "
        f"{limit / 1e6:.1f} MB (imgsearch web --max-upload-mb)"
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it grows past `limit` bytes (whatever
    Content-Length claims, or without one)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(_too_large(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(_too_large(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI receive() that hands over a body already read."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
