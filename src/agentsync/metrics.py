"""Prometheus metrics of one node, on a registry of its own (nothing global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "agentsync_connections", "Open reader connections", ["transport"], registry=r
        )
        self.sessions = Gauge("agentsync_sessions_loaded", "Sessions loaded in memory", registry=r)
        self.events_in = Counter("agentsync_events_in", "Events accepted and stored", registry=r)
        self.events_duplicate = Counter(
            "agentsync_events_duplicate",
            "Re-sent events answered with their original seq",
            registry=r,
        )
        self.events_out = Counter(
            "agentsync_events_out", "Events delivered to readers", ["transport"], registry=r
        )
        self.frames_sent = Counter(
            "agentsync_frames_sent", "WebSocket frames sent to readers", registry=r
        )
        self.append_seconds = Histogram(
            "agentsync_append_seconds",
            "Time from a write's arrival to its durable commit",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.slow_consumers = Counter(
            "agentsync_slow_consumers", "Readers cut off for falling too far behind", registry=r
        )
        self.rejected = Counter(
            "agentsync_requests_rejected", "Requests answered with an error", ["code"], registry=r
        )

        self.redactions = Counter(
            "agentsync_redactions",
            "Credentials masked before storing, by kind",
            ["kind"],
            registry=r,
        )
        self.append_conflicts = Counter(
            "agentsync_append_conflicts",
            "Appends that found their seqs taken by another node and prepared again",
            registry=r,
        )
        self.bus_messages = Counter(
            "agentsync_bus_messages", "Bus messages, by direction", ["direction"], registry=r
        )
        self.bus_catch_ups = Counter(
            "agentsync_bus_catch_ups",
            "Times a node read missed events from the store (a gap or a bus reconnect)",
            registry=r,
        )
        self.sessions_archived = Counter(
            "agentsync_sessions_archived",
            "Idle sessions moved from the store to the archive",
            registry=r,
        )
        self.sessions_restored = Counter(
            "agentsync_sessions_restored",
            "Archived sessions put back in the store on use",
            registry=r,
        )

        # Durable Streams (/v1/stream/)
        self.stream_appends = Counter(
            "agentsync_stream_appends",
            "Durable Streams appends: written, duplicate (an idempotent retry) or refused",
            ["outcome"],
            registry=r,
        )
        self.stream_reads = Counter(
            "agentsync_stream_reads",
            "Durable Streams reads, by mode (catch-up, long-poll, sse)",
            ["mode"],
            registry=r,
        )
        self.streams_cached = Gauge(
            "agentsync_streams_cached", "Durable Streams whose metadata is in memory", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
