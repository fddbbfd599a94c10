"""The webhook deliverer's metrics.

The deliverer is a process of its own (see :mod:`server.process.delivery`);
like every process of the instance, it writes its values to the instance's
metrics directory (see :mod:`server.common.metrics`), so that a scrape of any
worker shows them. Only an instance with a ``webhook_url`` has them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .metrics import require_multiprocess


class WebhookMetrics:
    """The metrics of the webhook deliverer, a process of its own."""

    def __init__(self, directory: str | None = None) -> None:
        if directory is not None:
            require_multiprocess(directory)
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=registry, multiprocess_mode="livemax")

        deliveries = Counter(
            "chat_webhook_deliveries",
            "Webhook deliveries by result: ok, failed (to be tried again), dead (given up).",
            ["result"],
            registry=registry,
        )
        self._deliveries = {r: deliveries.labels(r) for r in ("ok", "failed", "dead")}
        self._lag = gauge(
            "chat_webhook_lag_seconds",
            "Age of the oldest webhook event being delivered or waiting for its next try.",
        )
        self._dead_letters = gauge(
            "chat_webhook_dead_letters",
            "Webhook events kept as dead letters (in Redis, for every instance).",
        )

    def delivery(self, result: str) -> None:
        """A webhook POST: ``ok``, ``failed``, or ``dead`` (its event given up)."""
        self._deliveries[result].inc()

    def lag(self, seconds: float) -> None:
        self._lag.set(seconds)

    def dead_letters(self, count: int) -> None:
        self._dead_letters.set(count)
