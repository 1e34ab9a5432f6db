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
Every call returns the plain records of imgsearch.records, never protobuf messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np

from imgsearch import _convert, defaults, vectors
from imgsearch._channel import EMBEDDER_SERVICE_CONFIG, ChannelSecurity, Service
from imgsearch._fit import check_fit, check_vector_name, copy_vector, duplicate_distance
from imgsearch._ingest import IngestPipeline
from imgsearch._upsert import UpsertWriter
from imgsearch.errors import AlreadyExists, FailedPrecondition, ImageSearchError, InvalidArgument
from imgsearch.features import FeatureRow
from imgsearch.records import (
    CollectionInfo,
    CollectionStats,
    DuplicateGroup,
    Hit,
    IngestItem,
    IngestReport,
    ModelInfo,
    SearchOptions,
    StoredItem,
)
from imgsearch.regions import Box, query_image
from imgsearch.v1 import embedder_pb2, embedder_pb2_grpc, searcher_pb2, searcher_pb2_grpc

logger = logging.getLogger(__name__)

ANY = SearchOptions()
# Long enough for the largest bulk load; an interrupted one resumes where it stopped.
BULK_TIMEOUT_S = 3600.0
BATCH_SEARCHES = 100  # searches per SearchBatch call (the server takes up to 1000)
# Who waits for an embedding: a person ("interactive", served first) or nobody ("bulk").
Priority = Literal["interactive", "bulk"]


class ImageSearchClient:
    """Both services as one: search by image, stored id or vector; ingest images; read and
    describe collections. Thread-safe; close() (or a `with` block) releases the channels."""

    def __init__(
        self,
        embedder: str | None = defaults.EMBEDDER_ADDRESS,
        searcher: str | None = defaults.SEARCHER_ADDRESS,
        *,
        collection: str = defaults.COLLECTION,
        timeout_s: float = defaults.CALL_TIMEOUT_S,
        force: bool = False,
        security: ChannelSecurity | None = None,
    ) -> None:
        """`embedder`, `searcher`: addresses (None: this client does not use that service);
        `collection`: used by every call that names none; `force`: use a collection filled by
        another model; `security`: TLS and token, by default from the environment."""
        self.collection = collection
        self.timeout_s = timeout_s
        self.force = force
        security = ChannelSecurity.from_env() if security is None else security
        self._embedder = (
            Service.connect("embedder", embedder, security, EMBEDDER_SERVICE_CONFIG)
            if embedder
            else None
        )
        self._searcher = Service.connect("searcher", searcher, security) if searcher else None
        self._model_info: ModelInfo | None = None
        self._checked: set[str] = set()

    # -- plumbing -----------------------------------------------------------------------------

    def _service(self, name: str) -> Service:
        service = self._embedder if name == "embedder" else self._searcher
        if service is None:
            raise FailedPrecondition(f"this client has no {name} address")
        return service

    @property
    def embedder(self) -> embedder_pb2_grpc.EmbedderServiceStub:
        """The embedder's generated stub, for calls this client does not wrap."""
        return embedder_pb2_grpc.EmbedderServiceStub(self._service("embedder").channel)

    @property
    def searcher(self) -> searcher_pb2_grpc.SearcherServiceStub:
        """The searcher's generated stub, for calls this client does not wrap."""
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
        """Close both channels; calls in progress fail."""
        for service in (self._embedder, self._searcher):
            if service is not None:
                service.channel.close()

    def __enter__(self) -> ImageSearchClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the embedder -------------------------------------------------------------------------

    def model_info(self) -> ModelInfo:
        """What the embedder serves (asked once, then remembered)."""
        if self._model_info is None:
            response = self._call("embedder", "GetModelInfo", embedder_pb2.GetModelInfoRequest())
            self._model_info = _convert.model_info(response)
        return self._model_info

    def embed(
        self, images: Sequence[bytes], *, priority: Priority = "interactive", head: str = ""
    ) -> list[np.ndarray | ImageSearchError]:
        """One vector (of the named `head`; "": the first), or why there is none, per image.
        Interactive images go ahead of bulk ones; mark work nobody waits for "bulk"."""
        request = embedder_pb2.EmbedRequest(
            images=[embedder_pb2.Image(key=str(i), data=d) for i, d in enumerate(images)],
            priority=_convert.PRIORITY_TO_PROTO[priority],
            heads=[head] if head else [],
        )
        response = self._call("embedder", "Embed", request)
        return [_convert.embed_outcome(result, head) for result in response.results]

    # -- collections --------------------------------------------------------------------------

    def ensure_collection(self, name: str | None = None) -> CollectionInfo:
        """The collection, created for the embedder's model if missing (with a named vector for
        each head after the first: "gem" of an embedder of logits,gem); refuses a collection
        filled by a different model unless force=True."""
        info = self.model_info()
        collection = self._create_or_get(
            searcher_pb2.CreateCollectionRequest(
                name=name or self.collection,
                dim=info.dim,
                model_fingerprint=info.fingerprint,
                vectors=[
                    searcher_pb2.NamedVector(
                        name=head.name, dim=head.dim, model_fingerprint=head.fingerprint
                    )
                    for head in info.heads[1:]
                ],
            )
        )
        self._check_model(collection, info)
        return collection

    def searchable_collection(self, name: str | None = None) -> CollectionInfo:
        """The existing collection, checked against the embedder's model as ensure_collection
        does; never created, so a read-only token can search."""
        info = self.model_info()
        collection = self.describe_collection(name)
        self._check_model(collection, info)
        return collection

    def describe_collection(self, name: str | None = None) -> CollectionInfo:
        """The collection as the searcher records it; NotFound when there is none."""
        request = searcher_pb2.GetCollectionRequest(name=name or self.collection)
        return _convert.collection_info(self._call("searcher", "GetCollection", request).collection)

    def collections(self) -> list[CollectionInfo]:
        """Every collection of the searcher, by name."""
        response = self._call("searcher", "ListCollections", searcher_pb2.ListCollectionsRequest())
        return [_convert.collection_info(c) for c in response.collections]

    def stats(self, collection: str | None = None, vector: str = "") -> CollectionStats:
        """Rows, index, measured recall and sizes of a collection (or of its named `vector`)."""
        name = collection or self.collection
        request = searcher_pb2.GetStatsRequest(collection=name, vector_name=vector)
        return _convert.collection_stats(self._call("searcher", "GetStats", request))

    def _create_or_get(self, request: searcher_pb2.CreateCollectionRequest) -> CollectionInfo:
        """The collection `request` describes, or the one of that name that already exists."""
        try:
            created = self._call("searcher", "CreateCollection", request).collection
        except AlreadyExists:
            return self.describe_collection(request.name)
        return _convert.collection_info(created)

    def _check_model(self, collection: CollectionInfo, info: ModelInfo) -> None:
        if collection.name not in self._checked:
            check_fit(collection, info, force=self.force)
            self._checked.add(collection.name)

    # -- searching ----------------------------------------------------------------------------

    def search_vector(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        *,
        options: SearchOptions = ANY,
        collection: str | None = None,
    ) -> list[Hit]:
        """The stored items nearest to a vector, nearest first, as `options` say."""
        request = _convert.search_request(
            collection or self.collection, top_k, options, vector=vectors.to_proto(vector)
        )
        return _convert.hits(self._call("searcher", "Search", request))

    def search_vectors(
        self,
        queries: Sequence[np.ndarray],
        top_k: int = 10,
        *,
        options: SearchOptions = ANY,
        collection: str | None = None,
    ) -> list[list[Hit] | ImageSearchError]:
        """Each vector's nearest stored items, in the order given, from SearchBatch calls of up
        to BATCH_SEARCHES (one round trip each, searched side by side on the server). A query
        the searcher refuses gets its error in place of hits; the others are still answered."""
        name = collection or self.collection
        outcomes: list[list[Hit] | ImageSearchError] = []
        for start in range(0, len(queries), BATCH_SEARCHES):
            request = searcher_pb2.SearchBatchRequest(
                searches=[
                    _convert.search_request(name, top_k, options, vector=vectors.to_proto(v))
                    for v in queries[start : start + BATCH_SEARCHES]
                ]
            )
            response = self._call("searcher", "SearchBatch", request)
            outcomes += [_convert.batch_outcome(result) for result in response.results]
        return outcomes

    def search_id(
        self,
        item_id: int,
        top_k: int = 10,
        *,
        options: SearchOptions = ANY,
        collection: str | None = None,
    ) -> list[Hit]:
        """The stored items nearest to a stored item (itself included, at distance 0, unless
        options.min_distance leaves it out)."""
        request = _convert.search_request(collection or self.collection, top_k, options, id=item_id)
        return _convert.hits(self._call("searcher", "Search", request))

    def search_image(
        self,
        image: bytes | str | Path,
        top_k: int = 10,
        *,
        box: Box | None = None,
        options: SearchOptions = ANY,
        collection: str | None = None,
    ) -> list[Hit]:
        """Embed an image (bytes or a file path), or the region `box` of it, and return its
        nearest stored items."""
        (outcome,) = self.search_images(
            [image], top_k, box=box, options=options, collection=collection
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
        options: SearchOptions = ANY,
        collection: str | None = None,
    ) -> list[list[Hit] | ImageSearchError]:
        """Each image's own nearest stored items, in the order given: the images are embedded
        in batches, then searched together (search_vectors). An image that cannot be read,
        cropped to `box`, embedded or searched gets its error in place of hits; the others are
        still searched."""
        check_vector_name(self.searchable_collection(collection), options.vector)
        prepared = [self._query_bytes(image, box) for image in images]
        readable = {i: p for i, p in enumerate(prepared) if isinstance(p, bytes)}
        outcomes: list[list[Hit] | ImageSearchError] = [
            p if isinstance(p, ImageSearchError) else [] for p in prepared
        ]
        per_call = max(1, min(64, self.model_info().max_images_per_request or 64))
        indexes = list(readable)
        for start in range(0, len(indexes), per_call):
            chunk = indexes[start : start + per_call]
            embedded = self.embed(
                [readable[i] for i in chunk], priority="interactive", head=options.vector
            )
            found: dict[int, np.ndarray] = {}
            for index, vector in zip(chunk, embedded, strict=True):
                if isinstance(vector, ImageSearchError):
                    outcomes[index] = vector
                else:
                    found[index] = vector
            if len(found) == 1:  # one round trip either way; Search is the simpler call
                ((index, vector),) = found.items()
                answers: list[list[Hit] | ImageSearchError] = [
                    self.search_vector(vector, top_k, options=options, collection=collection)
                ]
            else:
                answers = self.search_vectors(
                    list(found.values()), top_k, options=options, collection=collection
                )
            for index, answer in zip(found, answers, strict=True):
                outcomes[index] = answer
        return outcomes

    def _query_bytes(self, image: bytes | str | Path, box: Box | None) -> bytes | ImageSearchError:
        try:
            return query_image(image, box, self.model_info().max_image_pixels or 50_000_000)
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
        vector: str | None = None,
    ) -> list[DuplicateGroup]:
        """The collection's groups of near-duplicates (each member within `max_distance` of
        every other, by `vector`; None: duplicates_vector), largest first, each with its first
        member (smallest id) first. `on_progress` gets (scanned, total) as the searcher scans.
        No deadline unless `timeout_s` is given: interrupting (Ctrl-C) cancels the search."""
        vector = self.duplicates_vector(collection) if vector is None else vector
        request = searcher_pb2.FindDuplicatesRequest(
            collection=collection or self.collection,
            max_distance=max_distance,
            filter=searcher_pb2.Filter(labels=list(labels)),
            limit=limit,
            exact=exact,
            vector_name=vector,
        )
        call = self.searcher.FindDuplicates(request, timeout=timeout_s)
        groups: list[DuplicateGroup] = []
        try:
            for event in call:
                if event.WhichOneof("event") == "group":
                    groups.append(_convert.duplicate_group(event.group))
                elif on_progress is not None:
                    on_progress(event.progress.scanned_items, event.progress.total_items)
        except grpc.RpcError as exc:
            raise self._service("searcher").error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; stops the searcher otherwise
        return groups

    def duplicates_vector(self, collection: str | None = None) -> str:
        """The vector duplicates are found by: the collection's named vector of copy detection
        ("gem") when it has one, else its own ("")."""
        return copy_vector(self.describe_collection(collection))

    def suggested_duplicate_distance(
        self, collection: str | None = None, vector: str | None = None
    ) -> float:
        """The embedder's measured duplicate distance for the head that makes `vector` (None:
        duplicates_vector), under that vector's metric."""
        described = self.describe_collection(collection)
        return duplicate_distance(
            described, self.model_info(), copy_vector(described) if vector is None else vector
        )

    # -- items --------------------------------------------------------------------------------

    def get_items(self, ids: Sequence[int], collection: str | None = None) -> list[StoredItem]:
        """The stored items of these ids (at most 1000) that exist, without their vectors."""
        request = searcher_pb2.GetRequest(collection=collection or self.collection, ids=ids)
        response = self._call("searcher", "Get", request)
        return [_convert.stored_item(item) for item in response.items]

    def existing_ids(self, ids: Sequence[int], collection: str | None = None) -> set[int]:
        """Which of these ids (at most 1000) are stored."""
        return {item.id for item in self.get_items(ids, collection)}

    def list_items(
        self, collection: str | None = None, *, include_vectors: bool = True, page_size: int = 500
    ) -> Iterator[StoredItem]:
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
            yield from map(_convert.stored_item, page.items)
            token = page.next_page_token
            if not token:
                return

    # -- storing ------------------------------------------------------------------------------

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
                        yield _convert.feature_message(name, batch)
                        batch = []
            except ImageSearchError as exc:
                stopped.append(exc)
                return
            if batch:
                yield _convert.feature_message(name, batch)

        timeout = max(self.timeout_s, BULK_TIMEOUT_S)
        response = self._call("searcher", "Upsert", messages(), timeout=timeout)
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

    def ingest(
        self,
        items: Iterable[IngestItem],
        *,
        collection: str | None = None,
        images_per_request: int = 16,
        requests_in_flight: int = 8,
        items_per_message: int = 64,
        on_progress: Callable[[int], object] | None = None,
        expected_items: int = 0,
    ) -> IngestReport:
        """Embed and store items, pipelined: up to `requests_in_flight` Embed calls run while
        finished vectors stream to the searcher in `items_per_message` transactions (an ingest
        interrupted loses at most a second of work). An image that cannot be embedded is
        reported and skipped. UNAVAILABLE is retried with backoff on both sides (storing an id
        again updates it): a restart costs time, not data; an interrupted ingest can be run
        again. `expected_items`: how many, if known (a large first load is indexed sooner)."""
        name = collection or self.collection
        described = self.ensure_collection(name)
        timeout, translate = max(self.timeout_s, BULK_TIMEOUT_S), self._service("searcher").error
        writer = UpsertWriter(self.searcher.Upsert, timeout_s=timeout, translate=translate)
        pipeline = IngestPipeline(
            self._service("embedder"),
            writer,
            name,
            timeout_s=self.timeout_s,
            requests_in_flight=requests_in_flight,
            items_per_message=items_per_message,
            on_progress=on_progress,
            heads=[vector.name for vector in described.vectors],
            expected_items=expected_items,
        )
        return pipeline.run(items, images_per_request)
