"""Metrics recorded on the event loop and exposed with ``prometheus_client``.

A server records what happens as plain Python updates (an ``int`` incremented, a
:class:`Histogram` observed) and registers a collector per component in its own
``CollectorRegistry``; at scrape time each collector reads those numbers, and the node's
live state, into ``prometheus_client`` metric families, and :func:`exposition` renders
them with the process collectors of the default registry (CPU, memory, descriptors, GC).

Invariants:
- Recording never takes a lock, allocates or formats: ``prometheus_client``'s own metric
  objects take a lock per update (about 2 us per histogram observation here, against
  0.3 us for :class:`Histogram`). That is safe because every update and every scrape runs
  on the Trio thread of the process, never in a worker thread; so a scrape also reads
  one consistent moment.
- Each server has its own registry (several nodes may share a process: ``trioraft
  cluster``, the tests); only the process collectors, which describe the whole process,
  come from the default registry.
- No exposition text is written here: ``prometheus_client`` renders every family.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "COUNT_BUCKETS",
    "LATENCY_BUCKETS",
    "SIZE_BUCKETS",
    "Histogram",
    "exposition",
    "histogram_family",
    "new_registry",
]

#: The text format :func:`exposition` writes (every name here is a classic Prometheus name,
#: so the 0.0.4 format that every Prometheus version reads says it all).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from a fraction of a millisecond (an fsync, a round trip on loopback) to seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
#: Counts (entries per message): powers of two up to the largest batches.
COUNT_BUCKETS = tuple(float(2**k) for k in range(13))
#: Bytes (snapshots): 1 KiB to 4 GiB, by factors of four.
SIZE_BUCKETS = tuple(float(1024 * 4**k) for k in range(12))


class Histogram:
    """Observations counted into buckets (``le`` bounds, as Prometheus has them), and their
    sum. Update it only from the Trio thread (see the module docstring)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf's
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus exposes them: ``(le, observations <= le)``."""
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        return buckets


def histogram_family(
    name: str,
    documentation: str,
    histograms: Iterable[tuple[Sequence[str], Histogram]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    """One histogram family with a metric per ``(label values, histogram)``."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in histograms:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family


class _WithProcess:
    """A node's registry followed by the default registry's collectors (the process's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from REGISTRY.collect()


def exposition(registry: CollectorRegistry) -> bytes:
    """``registry``'s metrics and the process's, in Prometheus' text format
    (:data:`CONTENT_TYPE`)."""
    return generate_latest(_WithProcess(registry))  # type: ignore[arg-type]


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own holding ``collectors``."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry
