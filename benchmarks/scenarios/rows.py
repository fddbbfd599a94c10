"""The rows that several scenarios' tables have alike (:class:`benchmarks.measure.Metric`)."""

from __future__ import annotations

from ..measure import Metric

STREAMS = Metric("streams connected", "streams", ratio=False)
PUBLISHED = Metric("messages published (201)", "published", ratio=False)
PUBLISH_FAILURES = Metric("publish failures", "publish_failures")
LATENCY_P50 = Metric("latency p50 (ms)", "latency_p50_ms", "{:.1f}")
LATENCY_P99 = Metric("latency p99 (ms)", "latency_p99_ms", "{:.1f}")
LOST = Metric("lost deliveries", "lost")
DUPLICATES = Metric("duplicate deliveries", "duplicates")
CONNECT_TIME = Metric("time to connect all (s)", "connect_s", "{:.1f}")
MEMORY_PER_CONNECTION = Metric("memory per connection (KiB)", "memory_per_connection_kib", "{:.1f}")
RSS_SUBSCRIBED = Metric("server RSS, subscribed (MiB)", "rss_subscribed_mib", "{:.1f}")
SERVER_CPU = Metric("server CPU (s)", "server_cpu_s", "{:.2f}")
LOADGEN_CPU = Metric("load generator CPU (% of a core)", "loadgen_cpu_percent", ratio=False)
# Of the chat-webhooks target only: n/a for the others.
WEBHOOK_MISSING = Metric("webhook events missing", "webhook_missing", ratio=False)
WEBHOOK_LATENCY_P99 = Metric(
    "webhook event p99 after its POST (ms)", "webhook_latency_p99_ms", "{:.1f}", ratio=False
)
WEBHOOK_RECEIVER_CPU = Metric(
    "webhook receiver CPU (s)", "webhook_receiver_cpu_s", "{:.2f}", ratio=False
)
# Of the chat-features target only (edits among the requests, streams typing): n/a for
# the others. Its deliveries, lost and duplicates count new messages and edits alike.
EDITS = Metric("of those, edits (200)", "edits", ratio=False)
UPDATE_DELIVERIES = Metric("of the deliveries, edits", "update_deliveries", ratio=False)
TYPING_SENT = Metric("typing notices sent", "typing_sent", ratio=False)
TYPING_REFUSED = Metric("typing notices refused", "typing_refused", ratio=False)
TYPING_RECEIVED = Metric("typing notices received", "typing_received", ratio=False)
