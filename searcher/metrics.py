"""The searcher's Prometheus metrics: the RPC metrics every server has, plus database query
time, rows written, connection-pool use, and live recall measured by shadow queries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from searcher.pool import ConnectionPool
from serving.metrics import RpcMetrics


class SearcherMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry, pool: ConnectionPool) -> None:
        super().__init__(registry)
        self.query_seconds = Histogram(
            "imgsearch_searcher_query_seconds",
            "time of one k-NN query in the store (database round trips included)",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.rows_written = Counter(
            "imgsearch_searcher_rows_written",
            "rows written by Upsert, by kind (inserted or updated)",
            ["kind"],
            registry=registry,
        )
        self.recall = Gauge(
            "imgsearch_searcher_recall",
            "recall@10 of recent searches, by collection: the mean over the last shadow queries "
            "(a share of searches re-run exactly in the background)",
            ["collection"],
            registry=registry,
        )
        self.shadow_queries = Counter(
            "imgsearch_searcher_shadow_queries",
            "searches re-run exactly in the background to measure recall, by collection",
            ["collection"],
            registry=registry,
        )
        Gauge(
            "imgsearch_searcher_pool_connections_in_use",
            "database connections lent out now",
            registry=registry,
        ).set_function(lambda: pool.in_use)
        Gauge(
            "imgsearch_searcher_pool_connections_max",
            "size of the database connection pool",
            registry=registry,
        ).set_function(lambda: pool.max_size)

    def observe_shadow_query(self, collection: str, recall: float, window_mean: float) -> None:
        self.shadow_queries.labels(collection).inc()
        self.recall.labels(collection).set(window_mean)
