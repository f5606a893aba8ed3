"""The gateway's metrics and their labels: what the Grafana dashboard and the alert rules may
query (tests/deploy/test_compose.py) and what the gateway must export (tests/gateway/
test_metrics.py). One list, so a metric added for the dashboard is also checked at the source.

A histogram appears as its _bucket series, without `le` (Prometheus adds it to buckets).
"""

from __future__ import annotations

DASHBOARD_METRICS: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "hearth_requests_total": {"endpoint", "model", "cluster", "upstream", "status"},
        "hearth_request_duration_seconds_bucket": {"endpoint", "model", "cluster"},
        "hearth_time_to_first_token_seconds_bucket": {"model", "cluster"},
        "hearth_inter_token_latency_seconds_bucket": {"model", "cluster"},
        "hearth_tokens_total": {"model", "cluster", "kind"},
        "hearth_requests_in_flight": {"model", "upstream"},
        "hearth_queue_depth": {"model", "cluster"},
        "hearth_workers": {"model", "cluster", "state"},
        "hearth_limiter_rejections_total": {"limit", "scope"},
        "hearth_limiter_degraded": set(),
        "hearth_upstream_failures_total": {"upstream", "reason"},
        "hearth_auth_decisions_total": {"method", "outcome"},
        "hearth_usage_records_pending": set(),
        "hearth_usage_records_dropped": set(),
        "hearth_site_up": {"cluster"},
        "hearth_scheduler_leader": set(),
        "hearth_scheduler_decisions_total": {"model", "cluster", "action", "reason_kind"},
        "hearth_scheduler_desired_workers": {"model"},
        "hearth_scheduler_demand": {"model"},
    }.items()
}
