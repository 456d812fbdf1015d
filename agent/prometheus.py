"""The part of Prometheus' client data model the agent uses, without `prometheus_client`.

Importing `prometheus_client` (any module of it runs the package's
`__init__`, which loads its HTTP exposition, WSGI and OpenMetrics code) cost
every agent about 2.5 MiB of RSS, the size of the gap to the agent's 60 MB
footprint goal; the agent writes the text format itself (`metrics.exposition`)
and needs only metric families, a registry and the standard `process_*`
families. These classes have prometheus_client's names and behaviour (sample
names, label order, `_total` counters, histogram buckets), so what the agent
exposes is byte for byte what prometheus_client would write for the same
families (tests/test_observability.py checks it against `generate_latest`,
which the coordinator and the tests still use).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None


class Metric:
    """A family: its name, help text, type and samples."""

    type = "unknown"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] | None = None):
        self.name = name
        self.documentation = documentation
        self.samples: list[Sample] = []
        self._labelnames = tuple(labels or ())

    def _labels(self, values: Sequence[str], *extra: tuple[str, str]) -> dict[str, str]:
        return dict([*zip(self._labelnames, values, strict=True), *extra])


class _ScalarFamily(Metric):
    """A family of one value per label set; `suffix` ends each sample's name."""

    suffix = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        value: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name.removesuffix(self.suffix), documentation, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append(Sample(self.name + self.suffix, self._labels(labels), value))


class GaugeMetricFamily(_ScalarFamily):
    type = "gauge"


class CounterMetricFamily(_ScalarFamily):
    """A counter family is named without `_total`; its samples carry it."""

    type = "counter"
    suffix = "_total"


class HistogramMetricFamily(Metric):
    type = "histogram"

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        """`buckets`: (upper bound as written, cumulative count), the last one "+Inf"."""
        for bound, count in buckets:
            labelled = self._labels(labels, ("le", bound))
            self.samples.append(Sample(self.name + "_bucket", labelled, count))
        self.samples.append(Sample(self.name + "_count", self._labels(labels), buckets[-1][1]))
        self.samples.append(Sample(self.name + "_sum", self._labels(labels), sum_value))


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class CollectorRegistry:
    """Collectors, asked in the order they were registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class ProcessCollector:
    """This process's standard `process_*` families, read from /proc at each collect
    (none where /proc is not Linux's)."""

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._boot = self._boot_time()

    def _boot_time(self) -> float:
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def collect(self) -> Iterator[Metric]:
        if not self._boot:
            return
        own = os.path.join(self._proc, "self")
        try:
            with open(os.path.join(own, "stat"), "rb") as stat:
                fields = stat.read().split(b")")[-1].split()  # after the command's name
        except OSError:
            return
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes", "Virtual memory size in bytes.", float(fields[20])
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            float(fields[21]) * self._page,
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            float(fields[19]) / self._ticks + self._boot,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            (float(fields[11]) + float(fields[12])) / self._ticks,
        )
        yield from self._files(own)

    def _files(self, own: str) -> Iterator[Metric]:
        try:
            with open(os.path.join(own, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        yield GaugeMetricFamily(
                            "process_max_fds",
                            "Maximum number of open file descriptors.",
                            float(line.split()[3]),
                        )
                        break
            opened = len(os.listdir(os.path.join(own, "fd")))
        except OSError:
            return
        yield GaugeMetricFamily(
            "process_open_fds", "Number of open file descriptors.", float(opened)
        )


def go_float(value: float) -> str:
    """A sample value as Prometheus' Go code writes it: +Inf, -Inf, NaN, and large
    numbers in exponent form a little sooner than Python's repr does."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text
