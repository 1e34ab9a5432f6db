"""The thin client: embeds through the embedder, stores and searches through the searcher.

    with ImageSearchClient(embedder="localhost:50051", searcher="localhost:50052") as client:
        client.ingest([IngestItem(id=1, image=open("cat.jpg", "rb").read(), label="cat")])
        for hit in client.search_image("query.jpg", top_k=5):
            print(hit.id, hit.label, hit.distance)

No torch, no database driver. Every call has a deadline. The embedder target may list replicas
("host1:50051,host2:50051") or name them through DNS ("dns:///embedder:50051"): calls are spread
round-robin, a dead replica is skipped, and UNAVAILABLE is retried with backoff (embedding is
idempotent). Vectors from different models are never mixed: a collection records the model
fingerprint it was filled with, and the client refuses a different embedder unless forced.
"""

from __future__ import annotations

import json
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from imgsearch import vectors
from imgsearch._channel import ChannelSecurity, open_channel
from imgsearch._status import error_from_rpc, error_from_status
from imgsearch._upsert import UpsertWriter
from imgsearch.errors import (
    AlreadyExists,
    FailedPrecondition,
    ImageSearchError,
    InvalidArgument,
    ServiceUnreachable,
)
from imgsearch.features import FeatureRow
from imgsearch.regions import Box, crop
from imgsearch.v1 import embedder_pb2, embedder_pb2_grpc, searcher_pb2, searcher_pb2_grpc

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "localhost:50051"
DEFAULT_SEARCHER = "localhost:50052"
DEFAULT_COLLECTION = "images"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Embed is idempotent: retry UNAVAILABLE (a replica restarting, a connection reset) and
# RESOURCE_EXHAUSTED (its queue is full) with backoff; round_robin sends the retry to another
# replica when there is one.
_EMBEDDER_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "imgsearch.v1.EmbedderService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        ],
    }
)


@dataclass(frozen=True)
class IngestItem:
    id: int
    image: bytes
    label: str = ""
    uri: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: int
    label: str
    uri: str
    distance: float
    attributes: dict[str, str]


@dataclass(frozen=True)
class StoredItem:
    id: int
    label: str
    uri: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class DuplicateMember:
    id: int
    label: str
    uri: str
    distance: float  # to the group's first member


@dataclass
class IngestReport:
    inserted: int = 0
    updated: int = 0
    failed: list[tuple[IngestItem, str]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.inserted + self.updated


def channel_target(addresses: str) -> str:
    """A gRPC target for one address, a comma-separated list of replicas, or a dns:/// name."""
    addresses = addresses.strip()
    if "://" in addresses or addresses.startswith(("ipv4:", "ipv6:", "unix:")):
        return addresses
    parts = [a.strip() for a in addresses.split(",") if a.strip()]
    if len(parts) == 1:
        return parts[0]
    resolved = []
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"address {part!r} is not host:port")
        infos = socket.getaddrinfo(host.strip("[]"), int(port), socket.AF_INET, socket.SOCK_STREAM)
        resolved += [f"{info[4][0]}:{port}" for info in infos[:1]]
    return "ipv4:" + ",".join(resolved)


def _channel(
    target: str, security: ChannelSecurity, service_config: str | None = None
) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
    ]
    if service_config is not None:
        options.append(("grpc.service_config", service_config))
    return open_channel(channel_target(target), options, security)


# What gRPC's core says when no connection could be made at all (as opposed to a server that
# answered UNAVAILABLE itself, e.g. a searcher whose database is down).
_CONNECT_FAILURES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "dns resolution failed",
    "connection refused",
    "handshake failed",
    "socket closed",
    "errors resolving",
)


@dataclass(frozen=True)
class _Service:
    """One of the two services as this client reaches it."""

    name: str  # "embedder" or "searcher": also the CLI flag that sets its address
    address: str
    channel: grpc.Channel

    def error(self, exc: grpc.RpcError) -> ImageSearchError:
        """The imgsearch error for a failed call; one that never reached the service says
        which service, where, and what to do about it."""
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and any(
            failure in details.lower() for failure in _CONNECT_FAILURES
        ):
            reason = details.rsplit(": ", 1)[-1].strip(" []") or "no connection"
            return ServiceUnreachable(
                f"cannot reach the {self.name} at {self.address} ({reason}). Start both "
                f"services on this machine with `imgsearch up`, or point --{self.name} "
                f"(env IMGSEARCH_{self.name.upper()}) at a running {self.name}"
            )
        return error_from_rpc(exc)


class ImageSearchClient:
    def __init__(
        self,
        embedder: str | None = DEFAULT_EMBEDDER,
        searcher: str | None = DEFAULT_SEARCHER,
        *,
        collection: str = DEFAULT_COLLECTION,
        timeout_s: float = 60.0,
        force: bool = False,
        security: ChannelSecurity | None = None,
    ) -> None:
        """`security`: TLS and token; by default from the environment (ChannelSecurity.from_env)."""
        self.collection = collection
        self.timeout_s = timeout_s
        self.force = force
        security = ChannelSecurity.from_env() if security is None else security
        self._embedder = (
            _Service("embedder", embedder, _channel(embedder, security, _EMBEDDER_SERVICE_CONFIG))
            if embedder
            else None
        )
        self._searcher = (
            _Service("searcher", searcher, _channel(searcher, security)) if searcher else None
        )
        self._model_info: embedder_pb2.GetModelInfoResponse | None = None
        self._checked: set[str] = set()

    # -- plumbing -----------------------------------------------------------------------------

    def _service(self, name: str) -> _Service:
        service = self._embedder if name == "embedder" else self._searcher
        if service is None:
            raise FailedPrecondition(f"this client has no {name} address")
        return service

    @property
    def embedder(self) -> embedder_pb2_grpc.EmbedderServiceStub:
        return embedder_pb2_grpc.EmbedderServiceStub(self._service("embedder").channel)

    @property
    def searcher(self) -> searcher_pb2_grpc.SearcherServiceStub:
        return searcher_pb2_grpc.SearcherServiceStub(self._service("searcher").channel)

    def _call(self, service: str, method: str, request: Any, **kwargs: Any) -> Any:
        """Call `method` of the embedder or the searcher with the client's deadline; a failure
        becomes the matching imgsearch error."""
        stub = self.embedder if service == "embedder" else self.searcher
        try:
            return getattr(stub, method)(
                request, timeout=kwargs.pop("timeout", self.timeout_s), **kwargs
            )
        except grpc.RpcError as exc:
            raise self._service(service).error(exc) from None

    def close(self) -> None:
        for service in (self._embedder, self._searcher):
            if service is not None:
                service.channel.close()

    def __enter__(self) -> ImageSearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the embedder -------------------------------------------------------------------------

    def model_info(self) -> embedder_pb2.GetModelInfoResponse:
        if self._model_info is None:
            self._model_info = self._call(
                "embedder", "GetModelInfo", embedder_pb2.GetModelInfoRequest()
            )
        return self._model_info

    def embed(self, images: Sequence[bytes]) -> list[np.ndarray | ImageSearchError]:
        """One vector, or the reason it could not be made, per image."""
        request = embedder_pb2.EmbedRequest(
            images=[embedder_pb2.Image(key=str(i), data=d) for i, d in enumerate(images)]
        )
        response = self._call("embedder", "Embed", request)
        return [_outcome(result) for result in response.results]

    # -- the searcher -------------------------------------------------------------------------

    def ensure_collection(self, name: str | None = None) -> searcher_pb2.Collection:
        """The collection, created for the embedder's model if missing; refuses a collection
        filled by a different model unless force=True."""
        name = name or self.collection
        info = self.model_info()
        collection = self._create_or_get(
            searcher_pb2.CreateCollectionRequest(
                name=name, dim=info.dim, model_fingerprint=info.fingerprint
            )
        )
        self._check_model(collection, info)
        return collection

    def searchable_collection(self, name: str | None = None) -> searcher_pb2.Collection:
        """The existing collection, checked against the embedder's model as ensure_collection
        does; never created, so a read-only token can search."""
        info = self.model_info()
        collection = self.describe_collection(name)
        self._check_model(collection, info)
        return collection

    def _create_or_get(
        self, request: searcher_pb2.CreateCollectionRequest
    ) -> searcher_pb2.Collection:
        """The collection `request` describes, or the one of that name that already exists."""
        try:
            return self._call("searcher", "CreateCollection", request).collection
        except AlreadyExists:
            return self._call(
                "searcher", "GetCollection", searcher_pb2.GetCollectionRequest(name=request.name)
            ).collection

    def _check_model(
        self, collection: searcher_pb2.Collection, info: embedder_pb2.GetModelInfoResponse
    ) -> None:
        if collection.name in self._checked:
            return
        if collection.dim != info.dim:
            raise FailedPrecondition(
                f"collection {collection.name!r} holds {collection.dim}-d vectors; the embedder "
                f"({info.model}, head {embedder_pb2.Head.Name(info.head)}) makes {info.dim}-d ones"
            )
        fingerprint = collection.model_fingerprint
        if fingerprint and fingerprint != info.fingerprint and not self.force:
            raise FailedPrecondition(
                f"collection {collection.name!r} was filled by model {fingerprint}; the embedder "
                f"serves {info.fingerprint} ({info.model}, {info.weights}). Vectors of "
                "different models cannot be compared; use another collection, or --force"
            )
        self._checked.add(collection.name)

    def search_vector(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        *,
        labels: Sequence[str] = (),
        collection: str | None = None,
        ef_search: int = 0,
        candidates: int = 0,
        exact: bool = False,
        min_distance: float = 0.0,
        max_distance: float = 0.0,
    ) -> list[Hit]:
        """The stored items nearest to a vector. min_distance > 0 leaves out its near-duplicates
        (and finds top_k others past them); max_distance > 0 keeps only hits that close."""
        request = searcher_pb2.SearchRequest(
            collection=collection or self.collection,
            vector=vectors.to_proto(vector),
            top_k=top_k,
            filter=searcher_pb2.Filter(labels=list(labels)),
            params=searcher_pb2.SearchParams(
                ef_search=ef_search, candidates=candidates, exact=exact
            ),
            min_distance=min_distance,
            max_distance=max_distance,
        )
        return _hits(self._call("searcher", "Search", request))

    def search_id(
        self,
        item_id: int,
        top_k: int = 10,
        *,
        labels: Sequence[str] = (),
        collection: str | None = None,
        min_distance: float = 0.0,
        max_distance: float = 0.0,
    ) -> list[Hit]:
        """The stored items nearest to a stored item (itself included, at distance 0, unless
        min_distance leaves it out)."""
        request = searcher_pb2.SearchRequest(
            collection=collection or self.collection,
            id=item_id,
            top_k=top_k,
            filter=searcher_pb2.Filter(labels=list(labels)),
            min_distance=min_distance,
            max_distance=max_distance,
        )
        return _hits(self._call("searcher", "Search", request))

    def search_image(
        self,
        image: bytes | str | Path,
        top_k: int = 10,
        *,
        box: Box | None = None,
        labels: Sequence[str] = (),
        collection: str | None = None,
        min_distance: float = 0.0,
        max_distance: float = 0.0,
    ) -> list[Hit]:
        """Embed an image (bytes or a file path), or the region `box` of it, and return its
        nearest stored items."""
        (outcome,) = self.search_images(
            [image],
            top_k,
            box=box,
            labels=labels,
            collection=collection,
            min_distance=min_distance,
            max_distance=max_distance,
        )
        if isinstance(outcome, ImageSearchError):
            raise outcome
        return outcome

    def search_images(
        self,
        images: Sequence[bytes | str | Path],
        top_k: int = 10,
        *,
        box: Box | None = None,
        labels: Sequence[str] = (),
        collection: str | None = None,
        min_distance: float = 0.0,
        max_distance: float = 0.0,
    ) -> list[list[Hit] | ImageSearchError]:
        """Each image's own nearest stored items, in the order given: the images are embedded
        in batches, then searched one by one. An image that cannot be read, cropped to `box` or
        embedded gets its error in place of hits; the others are still searched."""
        self.searchable_collection(collection)
        prepared: list[bytes | ImageSearchError] = [self._query_bytes(i, box) for i in images]
        readable = {i: p for i, p in enumerate(prepared) if isinstance(p, bytes)}
        outcomes: list[list[Hit] | ImageSearchError] = [
            p if isinstance(p, ImageSearchError) else [] for p in prepared
        ]
        per_call = max(1, min(64, self.model_info().max_images_per_request or 64))
        indexes = list(readable)
        for start in range(0, len(indexes), per_call):
            chunk = indexes[start : start + per_call]
            embedded = self.embed([readable[i] for i in chunk])
            for index, vector in zip(chunk, embedded, strict=True):
                if isinstance(vector, ImageSearchError):
                    outcomes[index] = vector
                    continue
                outcomes[index] = self.search_vector(
                    vector,
                    top_k,
                    labels=labels,
                    collection=collection,
                    min_distance=min_distance,
                    max_distance=max_distance,
                )
        return outcomes

    def _query_bytes(self, image: bytes | str | Path, box: Box | None) -> bytes | ImageSearchError:
        if isinstance(image, (str, Path)):
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                return InvalidArgument(f"{image}: {exc.strerror or exc}")
        else:
            data = image
        if box is None:
            return data
        try:
            return crop(data, box, self.model_info().max_image_pixels or 50_000_000)
        except ImageSearchError as exc:
            return exc

    def find_duplicates(
        self,
        max_distance: float,
        *,
        labels: Sequence[str] = (),
        collection: str | None = None,
        limit: int = 0,
        exact: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
    ) -> list[list[DuplicateMember]]:
        """The collection's groups of near-duplicates (items within `max_distance` of one
        another, transitively), each with its first member (smallest id) first. `on_progress`
        gets (scanned, total) as the searcher scans. No deadline unless `timeout_s` is given:
        a large collection takes minutes; interrupting (Ctrl-C) cancels the search."""
        request = searcher_pb2.FindDuplicatesRequest(
            collection=collection or self.collection,
            max_distance=max_distance,
            filter=searcher_pb2.Filter(labels=list(labels)),
            limit=limit,
            exact=exact,
        )
        call = self.searcher.FindDuplicates(request, timeout=timeout_s)
        groups: list[list[DuplicateMember]] = []
        try:
            for event in call:
                if event.WhichOneof("event") == "progress":
                    if on_progress is not None:
                        on_progress(event.progress.scanned_items, event.progress.total_items)
                else:
                    groups.append(
                        [
                            DuplicateMember(m.id, m.label, m.uri, m.distance)
                            for m in event.group.members
                        ]
                    )
        except grpc.RpcError as exc:
            raise self._service("searcher").error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; stops the searcher otherwise
        return groups

    def get_items(self, ids: Sequence[int], collection: str | None = None) -> list[StoredItem]:
        """The stored items of these ids (at most 1000) that exist, without their vectors."""
        request = searcher_pb2.GetRequest(collection=collection or self.collection, ids=ids)
        response = self._call("searcher", "Get", request)
        return [
            StoredItem(item.id, item.label, item.uri, dict(item.attributes))
            for item in response.items
        ]

    def existing_ids(self, ids: Sequence[int], collection: str | None = None) -> set[int]:
        request = searcher_pb2.GetRequest(collection=collection or self.collection, ids=ids)
        response = self._call("searcher", "Get", request)
        return {item.id for item in response.items}

    def describe_collection(self, name: str | None = None) -> searcher_pb2.Collection:
        request = searcher_pb2.GetCollectionRequest(name=name or self.collection)
        collection: searcher_pb2.Collection = self._call(
            "searcher", "GetCollection", request
        ).collection
        return collection

    def suggested_duplicate_distance(self, collection: str | None = None) -> float:
        """The embedder's measured duplicate distance under the collection's metric."""
        metric = self.describe_collection(collection).metric
        info = self.model_info()
        suggestion = {
            searcher_pb2.METRIC_L2: info.duplicate_distance,
            searcher_pb2.METRIC_COSINE: info.duplicate_cosine_distance,
        }.get(metric, 0.0)
        if suggestion <= 0:
            raise InvalidArgument(
                "the embedder suggests no duplicate distance for this collection's metric "
                f"({searcher_pb2.Metric.Name(metric)}); give --max-distance"
            )
        return float(suggestion)

    def collections(self) -> list[searcher_pb2.Collection]:
        response = self._call("searcher", "ListCollections", searcher_pb2.ListCollectionsRequest())
        return list(response.collections)

    def stats(self, collection: str | None = None) -> searcher_pb2.GetStatsResponse:
        request = searcher_pb2.GetStatsRequest(collection=collection or self.collection)
        response: searcher_pb2.GetStatsResponse = self._call("searcher", "GetStats", request)
        return response

    def list_items(
        self, collection: str | None = None, *, include_vectors: bool = True, page_size: int = 500
    ) -> Iterator[searcher_pb2.Item]:
        """Every item of a collection in id order, fetched a page at a time."""
        token = ""
        while True:
            page = self._call(
                "searcher",
                "ListItems",
                searcher_pb2.ListItemsRequest(
                    collection=collection or self.collection,
                    page_size=page_size,
                    page_token=token,
                    include_vectors=include_vectors,
                ),
            )
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    def import_features(
        self, rows: Iterable[FeatureRow], *, collection: str | None = None, per_message: int = 500
    ) -> int:
        """Store rows of a feature file (vectors computed elsewhere), `per_message` rows per
        transaction. At a malformed row the rows of its unfinished message are not stored and
        the error says how many were; returns the number stored."""
        name = collection or self.collection
        rows = iter(rows)
        try:
            first = next(rows)
        except StopIteration:
            return 0
        self._ensure_dim(name, first.vector.size)
        stopped: list[ImageSearchError] = []

        def messages() -> Iterator[searcher_pb2.UpsertRequest]:
            batch = [first]
            try:
                for row in rows:
                    batch.append(row)
                    if len(batch) == per_message:
                        yield _feature_message(name, batch)
                        batch = []
            except ImageSearchError as exc:
                stopped.append(exc)
                return
            if batch:
                yield _feature_message(name, batch)

        response = self._call("searcher", "Upsert", messages(), timeout=max(self.timeout_s, 3600))
        stored = int(response.inserted_count + response.updated_count)
        if stopped:
            raise InvalidArgument(
                f"{stopped[0]}; stored {stored} rows before it (whole messages of {per_message}); "
                "fix the line and run again (stored ids are updated, not duplicated)"
            )
        return stored

    def _ensure_dim(self, name: str, dim: int) -> None:
        collection = self._create_or_get(searcher_pb2.CreateCollectionRequest(name=name, dim=dim))
        if collection.dim != dim:
            raise FailedPrecondition(
                f"collection {name!r} holds {collection.dim}-d vectors; the file has {dim}-d ones"
            )

    # -- ingestion ----------------------------------------------------------------------------

    def ingest(
        self,
        items: Iterable[IngestItem],
        *,
        collection: str | None = None,
        images_per_request: int = 16,
        requests_in_flight: int = 8,
        items_per_message: int = 64,
        on_progress: Callable[[int], object] | None = None,
    ) -> IngestReport:
        """Embed and store items, pipelined: up to `requests_in_flight` Embed calls run while
        finished vectors stream to the searcher in `items_per_message` transactions (small, so
        an interrupted ingest loses at most a second of work). An image that cannot be embedded
        is reported and skipped; the rest are stored. UNAVAILABLE is retried with backoff on
        both sides (storing an id again only updates it), so a service restarting mid-ingest
        costs time, not data; and an interrupted ingest can simply be run again."""
        name = collection or self.collection
        self.ensure_collection(name)
        report = IngestReport()
        writer = UpsertWriter(
            self.searcher.Upsert,
            timeout_s=max(self.timeout_s, 3600.0),
            translate=self._service("searcher").error,
        )
        pending: deque[tuple[list[IngestItem], Any]] = deque()
        batch: list[searcher_pb2.Item] = []

        def drain_one() -> None:
            chunk, future = pending.popleft()
            try:
                response = future.result()
            except grpc.RpcError as exc:
                error = self._service("embedder").error(exc)
                what = (
                    error
                    if isinstance(error, ServiceUnreachable)
                    else (f"the embedder failed ({exc.code().name}: {error})")
                )
                raise type(error)(
                    f"{what}; the items stored before stay stored: run the same ingest again "
                    "to resume"
                ) from None
            for item, result in zip(chunk, response.results, strict=True):
                outcome = _outcome(result)
                if isinstance(outcome, ImageSearchError):
                    report.failed.append((item, str(outcome)))
                else:
                    batch.append(
                        searcher_pb2.Item(
                            id=item.id,
                            label=item.label,
                            uri=item.uri,
                            attributes=item.attributes,
                            vector=vectors.to_proto(outcome),
                        )
                    )
            if len(batch) >= items_per_message:
                flush()
            if on_progress is not None:
                on_progress(len(chunk))

        def flush() -> None:
            if batch:
                writer.put(searcher_pb2.UpsertRequest(collection=name, items=list(batch)))
            batch.clear()

        try:
            for chunk in _chunks(items, images_per_request):
                request = embedder_pb2.EmbedRequest(
                    images=[embedder_pb2.Image(key=str(i.id), data=i.image) for i in chunk]
                )
                pending.append((chunk, self.embedder.Embed.future(request, timeout=self.timeout_s)))
                if len(pending) >= requests_in_flight:
                    drain_one()
                if writer.error is not None:
                    break
            while pending and writer.error is None:
                drain_one()
            flush()
        finally:
            for _, future in pending:
                future.cancel()
            writer.close()  # raises what stopped the writer, if anything did
        report.inserted, report.updated = writer.inserted, writer.updated
        return report


def _feature_message(name: str, rows: list[FeatureRow]) -> searcher_pb2.UpsertRequest:
    return searcher_pb2.UpsertRequest(
        collection=name,
        items=[
            searcher_pb2.Item(id=r.id, label=r.label, vector=vectors.to_proto(r.vector))
            for r in rows
        ],
    )


def _chunks(items: Iterable[IngestItem], size: int) -> Iterator[list[IngestItem]]:
    chunk: list[IngestItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _outcome(result: embedder_pb2.EmbedResult) -> np.ndarray | ImageSearchError:
    if result.WhichOneof("outcome") == "vector":
        return vectors.from_proto(result.vector)
    return error_from_status(result.error.code, result.error.message)


def _hits(response: searcher_pb2.SearchResponse) -> list[Hit]:
    return [Hit(h.id, h.label, h.uri, h.distance, dict(h.attributes)) for h in response.hits]
