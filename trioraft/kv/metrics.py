"""What a KV server records for ``/metrics``: client ops, proposals, refused requests.

:class:`KVMetrics` is updated by the server as it answers (plain ``int``\\ s, see
:mod:`trioraft.metrics`); :class:`KVCollector` exposes it as ``trioraft_kv_*`` and
``trioraft_requests_refused_total`` families, with gauges read at scrape time (keys,
client sessions, storage and quota). :func:`count_refusals` counts the requests an app
refuses for what they are, by reason, from their status.

Invariants:
- Per client op, one dict increment (``ops[kind, result]``, about 0.3 us); per proposal (one call of
  ``execute_many``: a request, a batch, an embedded op), one ``int`` increment. Nothing
  else on that path.
- ``refused`` counts requests (and, for ``quota``, ops) refused for what they are or for
  the server's limits, never ops answered ``WrongLeader``: those are retried elsewhere.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from quart import Response
from quart_trio import QuartTrio

#: Why a request was refused, by the status the app answered it with.
REFUSAL_REASONS = {
    400: "bad_input",
    404: "bad_input",
    405: "bad_input",
    422: "bad_input",
    413: "too_large",
    401: "unauthenticated",
    408: "too_slow",
}

#: The outcomes of a proposal that did not apply (see ``KVNode.execute_many``).
PROPOSAL_FAILURES = ("not_leader", "leadership_lost", "timed_out", "too_large")


class KVMetrics:
    """The numbers a KV server records (see the module docstring)."""

    def __init__(self) -> None:
        self.ops: dict[tuple[str, str], int] = {}  # by (kind, result); a plain dict: cheapest
        self.proposals_applied = 0
        self.proposals_failed = dict.fromkeys(PROPOSAL_FAILURES, 0)
        self.refused: collections.Counter[str] = collections.Counter()  # by reason
        self.backups = 0

    def count_op(self, kind: str, result: str) -> None:
        key = (kind, result)
        self.ops[key] = self.ops.get(key, 0) + 1


def count_refusals(app: QuartTrio, metrics: KVMetrics) -> None:
    """Count each request ``app`` refuses (4xx), by reason, in ``metrics.refused``."""

    @app.after_request
    async def count(response: Response) -> Response:
        reason = REFUSAL_REASONS.get(response.status_code)
        if reason is not None:
            metrics.refused[reason] += 1
        return response


class KVCollector:
    """``trioraft_kv_*`` metrics of a KV server: ``metrics``, plus the gauges that
    ``gauges()`` reads from its state (name without prefix -> (help, value)) and refusals
    counted elsewhere (``extra_refused()``: reason -> count; peer messages, say)."""

    def __init__(
        self,
        metrics: KVMetrics,
        gauges: Callable[[], Mapping[str, tuple[str, float]]],
        extra_refused: Callable[[], Mapping[str, int]] = dict,
        *,
        replicated: bool = True,
    ) -> None:
        self.metrics = metrics
        self.gauges = gauges
        self.extra_refused = extra_refused
        self.replicated = replicated  # proposals and backups are the replicated KV's

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        ops = CounterMetricFamily(
            "trioraft_kv_ops", "Client ops answered, by kind and result.", labels=["op", "result"]
        )
        for (kind, result), count in sorted(m.ops.items()):
            ops.add_metric([kind, result], count)
        yield ops
        if self.replicated:
            yield from self._replicated()
        refused = CounterMetricFamily(
            "trioraft_requests_refused",
            "Requests refused for what they are or for a limit, by reason (quota: ops).",
            labels=["reason"],
        )
        reasons = collections.Counter({r: 0 for r in (*REFUSAL_REASONS.values(), "quota")})
        reasons.update(m.refused)
        reasons.update(self.extra_refused())
        for reason, count in sorted(reasons.items()):
            refused.add_metric([reason], count)
        yield refused
        for name, (documentation, value) in self.gauges().items():
            yield GaugeMetricFamily(f"trioraft_{name}", documentation, value=float(value))

    def _replicated(self) -> Iterator[Metric]:
        m = self.metrics
        proposals = CounterMetricFamily(
            "trioraft_kv_proposals",
            "Proposals (the ops of one request, batch or embedded call, in one entry) by "
            "outcome: applied, or why this server could not tell.",
            labels=["outcome"],
        )
        proposals.add_metric(["applied"], m.proposals_applied)
        for outcome, count in m.proposals_failed.items():
            proposals.add_metric([outcome], count)
        yield proposals
        yield CounterMetricFamily(
            "trioraft_kv_backups", "Backups served by this server.", value=m.backups
        )
