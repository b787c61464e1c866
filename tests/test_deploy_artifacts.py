"""The alerting rules and the Grafana dashboard of deploy/ read only metrics a real server
exposes, and only the metric names the project promises (the extractor is tested first)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import statekeeper
from statekeeper.events import custom_event
from statekeeper.v1 import events_pb2, events_pb2_grpc
from statekeeper_server.app import Application
from tests.brokers import REDIS_URL, redis_keys
from tests.harness import running_app
from tests.promql_names import base_name, label_values_metric, metric_names
from tests.waiting import ENOUGH

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "statekeeper.json"

CONTRACT = frozenset(
    {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "grpc_server_handling_seconds",
        "statekeeper_build_info",
        "statekeeper_ready",
        "statekeeper_active_streams",
        "statekeeper_event_loop_lag_seconds",
        "statekeeper_large_requests_waiting",
        "statekeeper_events_appended_total",
        "statekeeper_event_bytes_appended_total",
        "statekeeper_replay_followers",
        "statekeeper_replay_slowest_follower_lag",
        "statekeeper_commit_batch_size",
        "statekeeper_commit_seconds",
        "statekeeper_fsync_seconds",
        "statekeeper_store_errors_total",
        "statekeeper_postgres_pool_size",
        "statekeeper_postgres_pool_in_use",
        "statekeeper_postgres_pool_waiters",
        "statekeeper_postgres_listen_reconnects_total",
        "statekeeper_jobs",
        "statekeeper_job_oldest_available_age_seconds",
        "statekeeper_job_leases_expired_total",
        "statekeeper_jobs_dead_total",
        "statekeeper_checkpoints_saved_total",
        "statekeeper_checkpoints_dropped_total",
        "statekeeper_relay_lag_events",
        "statekeeper_relay_lag_seconds",
        "statekeeper_relay_events_forwarded_total",
    }
)
"""The metric names the server promises (histograms by their base name)."""
PROMETHEUS_OWN = frozenset({"up"})
"""Series Prometheus records itself for every scrape target; no server exposes them."""
FAST = {"job_sweep_interval": 0.05, "heartbeat_interval": 0.05}


# -- the extractor ------------------------------------------------------------------------


def test_a_bare_selector_names_its_metric() -> None:
    assert metric_names("statekeeper_ready == 0") == {"statekeeper_ready"}


def test_functions_aggregations_and_label_lists_are_not_metrics() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (instance, le)"
        ' (rate(statekeeper_fsync_seconds_bucket{job="statekeeper"}[5m]))) > 0.1'
    )
    assert metric_names(expr) == {"statekeeper_fsync_seconds_bucket"}


def test_label_matchers_and_grafana_variables_are_not_metrics() -> None:
    expr = (
        'sum(rate(grpc_server_handled_total{instance=~"$instance", grpc_code!~"OK|NOT_FOUND"}'
        "[$__rate_interval])) / sum(rate(grpc_server_started_total{instance=~'${instance}'}[1m]))"
    )
    assert metric_names(expr) == {"grpc_server_handled_total", "grpc_server_started_total"}


def test_set_operators_bool_offset_and_vector_matching_are_not_metrics() -> None:
    expr = (
        "(a_total offset 5m > bool 1) and on (instance) group_left (version) b_info"
        " or c unless ignoring (x) d without_suffix"
    )
    assert metric_names(expr) == {"a_total", "b_info", "c", "d", "without_suffix"}


def test_aggregations_with_the_grouping_after_the_arguments() -> None:
    assert metric_names("sum(rate(x_total[5m])) without (kind) > 1 / 60") == {"x_total"}


def test_an_aggregation_with_the_grouping_first_is_not_a_metric() -> None:
    assert metric_names("count without (queue) (topk(3, statekeeper_jobs))") == {"statekeeper_jobs"}


def test_a_name_matcher_names_its_metric() -> None:
    assert metric_names('{__name__="statekeeper_ready", instance="a"}') == {"statekeeper_ready"}


def test_a_subquery_range_is_not_a_metric() -> None:
    assert metric_names("max_over_time(rate(y_total[1m])[1h:5m])") == {"y_total"}


def test_histogram_series_map_to_their_base_name_and_counters_keep_total() -> None:
    assert base_name("statekeeper_fsync_seconds_bucket") == "statekeeper_fsync_seconds"
    assert base_name("statekeeper_commit_batch_size_sum") == "statekeeper_commit_batch_size"
    assert base_name("grpc_server_handling_seconds_count") == "grpc_server_handling_seconds"
    assert base_name("statekeeper_jobs_dead_total") == "statekeeper_jobs_dead_total"
    assert base_name("statekeeper_jobs") == "statekeeper_jobs"


def test_a_label_values_query_names_its_metric() -> None:
    assert label_values_metric("label_values(statekeeper_build_info, instance)") == (
        "statekeeper_build_info"
    )
    assert label_values_metric("label_values(instance)") is None


def test_an_unbalanced_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        metric_names("sum(rate(x[5m])")


# -- the artifacts ----------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml."""
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The dashboard's JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def used_series() -> dict[str, set[str]]:
    """Every series name the alerts and the dashboard read, with where each is read."""
    where: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            where.setdefault(name, set()).add(f"alert {rule['alert']}")
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                where.setdefault(name, set()).add(f"panel {panel['title']}")
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        named = label_values_metric(text)
        if named is not None:
            where.setdefault(named, set()).add(f"variable {variable['name']}")
    return where


def test_every_alert_has_a_duration_severity_summary_and_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert metric_names(rule["expr"]), rule["alert"]


def test_every_dashboard_panel_queries_the_chosen_data_source_and_instances() -> None:
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    graphs = [panel for panel in panels(board) if panel["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_alerts_and_dashboard_use_only_the_promised_metric_names() -> None:
    strays = {
        name: sorted(places)
        for name, places in used_series().items()
        if base_name(name) not in CONTRACT and name not in PROMETHEUS_OWN
    }
    assert not strays


def test_the_dashboard_shows_every_promised_metric() -> None:
    board = dashboard()
    shown = {
        base_name(name)
        for panel in panels(board)
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    assert CONTRACT - shown == set()


# -- against real servers --------------------------------------------------------------------


def scrape(port: int) -> set[str]:
    """The sample names of the server's /metrics now (counters with `_total`, histograms'
    `_bucket`, `_sum` and `_count`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def sample_names(port: int) -> set[str]:
    """`scrape` off the event loop (the server under test serves on this loop)."""
    return await asyncio.to_thread(scrape, port)


@contextlib.asynccontextmanager
async def exercised(app: Application) -> AsyncIterator[None]:
    """Real calls of every kind the metrics count, and a follower kept open inside the
    block (so open streams show)."""
    async with statekeeper.AsyncClient(f"127.0.0.1:{app.port}") as client:
        # A relay to the app's sink forwards the events below (relay metrics).
        await client.relays.create("audit", "audit")
        for step in range(3):
            await client.events.append("run-1", custom_event("step", {"n": step}))
        # The last save keeps one checkpoint, so retention drops the others.
        for step in range(3):
            await client.checkpoints.save_workflow("run-1", "flow", step=step, keep_last=1)
        await client.jobs.enqueue("work", queue="waiting")
        await client.jobs.enqueue("work", queue="doomed", max_retries=0)
        [doomed] = await client.jobs.lease("doomed", worker_id="w")
        await client.jobs.fail(doomed.job_id, doomed.lease.lease_id, "broken")
        await client.jobs.enqueue("work", queue="abandoned")
        await client.jobs.lease("abandoned", worker_id="w", lease_duration=0.05)
        stub = events_pb2_grpc.EventLogServiceStub(client.channel)
        follower = stub.ReplayEvents(events_pb2.ReplayEventsRequest(run_id="run-1", follow=True))
        async for message in follower:
            if message.HasField("caught_up"):
                break
        try:
            yield
        finally:
            follower.cancel()


async def exposed_once_counted(port: int, name: str) -> set[str]:
    """The sample names of the first scrape that has `name`; fails after ENOUGH seconds."""
    for _ in range(int(ENOUGH / 0.05)):
        names = await sample_names(port)
        if name in names:
            return names
        await asyncio.sleep(0.05)
    raise AssertionError(f"never exposed: {name}")


@pytest.mark.own_access_control
async def test_every_series_the_alerts_and_dashboard_read_is_exposed_by_a_real_server(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        redis_keys() as (_, prefix),
        running_app(
            f"file:{tmp_path / 'statekeeper.db'}",
            http_listen="127.0.0.1:0",
            sink=[f"audit={REDIS_URL}?stream={prefix}"],
            **FAST,
        ) as on_file,
        running_app(postgres_url, http_listen="127.0.0.1:0", **FAST) as on_postgres,
        exercised(on_file),
    ):
        # The sweeper takes the abandoned lease back after it expired.
        exposed = await exposed_once_counted(
            on_file.http_port, "statekeeper_job_leases_expired_total"
        )
        exposed |= await exposed_once_counted(
            on_file.http_port, "statekeeper_relay_events_forwarded_total"
        )
        # Pool gauges exist only while a PostgreSQL store is open in the process (the
        # registry is process-wide, so either scrape shows them; both are read).
        exposed |= await sample_names(on_postgres.http_port)
    missing = {
        name: sorted(places)
        for name, places in used_series().items()
        if name not in exposed and name not in PROMETHEUS_OWN
    }
    assert not missing
