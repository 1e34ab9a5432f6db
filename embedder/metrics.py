"""The embedder's Prometheus metrics: the RPC metrics every server has, plus the batcher's own
counters (batch sizes, queue depth, per-stage time, images, and per lane: waiting images, queue
wait, batches and images), read from BatcherStats when Prometheus scrapes, so the batching loop
pays nothing for them. A starving lane shows as its queue wait growing while its images do not."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from embedder.batcher import WAIT_BUCKETS_S, Batcher
from embedder.lanes import Lane
from serving.metrics import RpcMetrics

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BatcherCollector(Collector):
    """The batcher's counters as Prometheus metric families, read at scrape time."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher

    def collect(self) -> Iterator[Metric]:
        stats = self.batcher.stats
        sizes = dict(stats.batch_sizes)  # a copy: the event loop keeps counting
        buckets = []
        for bound in BATCH_SIZE_BUCKETS:
            buckets.append((str(bound), sum(n for size, n in sizes.items() if size <= bound)))
        total = sum(sizes.values())
        buckets.append(("+Inf", total))
        yield HistogramMetricFamily(
            "imgsearch_embedder_batch_size",
            "images per batch run through the model",
            buckets=buckets,
            sum_value=sum(size * n for size, n in sizes.items()),
        )
        yield GaugeMetricFamily(
            "imgsearch_embedder_queue_images",
            "images decoded and waiting for the model",
            value=self.batcher.queue_depth,
        )
        yield GaugeMetricFamily(
            "imgsearch_embedder_in_flight_images",
            "images admitted and not yet answered (bounded by max_queue_images)",
            value=self.batcher.in_flight,
        )
        yield CounterMetricFamily(
            "imgsearch_embedder_images", "images embedded (rate: images/s)", value=stats.images
        )
        yield from self._lanes()
        by_label = (
            (
                "imgsearch_embedder_stage_seconds",
                "time spent per stage, summed over images (forward: over batches)",
                "stage",
                {
                    "decode": stats.decode_seconds,
                    "preprocess": stats.preprocess_seconds,
                    "forward": stats.forward_seconds,
                },
            ),
            (
                "imgsearch_embedder_images_not_embedded",
                "images refused or dropped, by reason",
                "reason",
                {
                    "overload": stats.rejected_overload,
                    "cancelled": stats.dropped_cancelled,
                    "deadline": stats.dropped_expired,
                    **dict(stats.errors),
                },
            ),
        )
        for name, text, label, values in by_label:
            family = CounterMetricFamily(name, text, labels=[label])
            for value_label, value in values.items():
                family.add_metric([value_label], value)
            yield family

    def _lanes(self) -> Iterator[Metric]:
        stats = self.batcher.stats
        waiting = GaugeMetricFamily(
            "imgsearch_embedder_lane_waiting_images",
            "images waiting, by lane and for what (a decoding thread, or the model)",
            labels=["lane", "for"],
        )
        wait = HistogramMetricFamily(
            "imgsearch_embedder_queue_wait_seconds",
            "seconds from an image's admission to its batch's start (decoding included), by lane",
            labels=["lane"],
        )
        batches = CounterMetricFamily(
            "imgsearch_embedder_lane_batches", "batches run, by lane", labels=["lane"]
        )
        images = CounterMetricFamily(
            "imgsearch_embedder_lane_images", "images embedded, by lane", labels=["lane"]
        )
        for lane in Lane:
            decode, model = self.batcher.lane_waiting(lane)
            waiting.add_metric([lane.value, "decode"], decode)
            waiting.add_metric([lane.value, "model"], model)
            histogram = stats.queue_wait[lane]
            counts, cumulative, buckets = list(histogram.counts), 0, []
            for bound, count in zip(WAIT_BUCKETS_S, counts, strict=True):
                cumulative += count
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", histogram.total))
            wait.add_metric([lane.value], buckets, histogram.sum_s)
            batches.add_metric([lane.value], stats.lane_batches[lane])
            images.add_metric([lane.value], stats.lane_images[lane])
        yield from (waiting, wait, batches, images)


def embedder_metrics(batcher: Batcher) -> RpcMetrics:
    registry = CollectorRegistry()
    registry.register(BatcherCollector(batcher))
    return RpcMetrics(registry)
