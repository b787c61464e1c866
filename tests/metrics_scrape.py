"""Talking to a server's HTTP side port as Prometheus and probes do, over real HTTP.

    answer = await http_get(app.http_port, "/readyz")
    before = await scrape(app.http_port)
    ...  # real calls
    after = await scrape(app.http_port)
    assert after.value("grpc_server_started_total", grpc_method="AppendEvent") - before.value(
        "grpc_server_started_total", grpc_method="AppendEvent"
    ) == 3

Requests run on a worker thread (urllib), so an in-process server on the test's
own event loop keeps answering. In the suite's run with access control on,
`scrape` sends the suite's token unless given one.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tests import suite_access

TIMEOUT = 10.0


@dataclass(frozen=True)
class HttpAnswer:
    """What the side port answered: status, headers (names lowercased) and body."""

    status: int
    headers: Mapping[str, str]
    body: str


def _request(url: str, method: str, headers: Mapping[str, str]) -> HttpAnswer:
    request = urllib.request.Request(url, method=method, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, received, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, received, body = error.code, error.headers, error.read()
    return HttpAnswer(
        status, {k.lower(): v for k, v in received.items()}, body.decode("utf-8", "replace")
    )


async def http_get(
    port: int, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> HttpAnswer:
    """`method` (GET by default) `path` on 127.0.0.1:`port`, whatever the status."""
    url = f"http://127.0.0.1:{port}{path}"
    return await asyncio.to_thread(_request, url, method, headers or {})


def bearer(token: str) -> dict[str, str]:
    """The Authorization header carrying `token`."""
    return {"Authorization": f"Bearer {token}"}


class Metrics:
    """One scrape, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (0 when
        there is none: a series appears with its first call)."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        """Whether a sample called `name` with (at least) `labels` was exposed."""
        return any(
            sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
            for sample in self.samples
        )


async def get_metrics(
    port: int, token: str | None = None, headers: Mapping[str, str] | None = None
) -> HttpAnswer:
    """GET /metrics on 127.0.0.1:`port` with `headers`, sending `token` (in the suite's run
    with access control on, the suite's token unless given one)."""
    access = suite_access.active()
    if token is None and access is not None:
        token = access.token
    sent = {**(headers or {}), **(bearer(token) if token else {})}
    return await http_get(port, "/metrics", sent)


async def scrape(port: int, token: str | None = None) -> Metrics:
    """GET /metrics on 127.0.0.1:`port` (as Prometheus text), parsed; fails unless 200."""
    answer = await get_metrics(port, token)
    assert answer.status == 200, f"/metrics answered {answer.status}: {answer.body}"
    return Metrics(answer.body)
