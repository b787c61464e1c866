"""Jobs: enqueue -> lease (batches of 10, 8 workers) -> complete, in jobs completed per second.

Producers enqueue with EnqueueJobs in batches of 10 and keep a backlog of
available jobs; 8 workers each lease up to 10 (long-polling) and complete
every job they got, concurrently. The bare echo runs the same calls with
responses of the same size, so it gives the most jobs/s this RPC mix can
reach; Redis Streams (consumer group) and a NATS JetStream pull consumer
are the peers.
"""

from __future__ import annotations

import asyncio

from bench import payloads, peers
from bench.harness import Bench
from bench.load import Window, closed_loop, open_channels, raw_unary, rpc_errors
from bench.report import Row, Target
from bench.scenarios.common import (
    COMPLETE_JOB,
    ENQUEUE_JOBS,
    LEASE_JOBS,
    compare,
    echo,
    peer_row,
    repeated,
    store_label,
)
from statekeeper.v1 import jobs_pb2

WORKERS = 8
LEASE = 10
ENQUEUE_BATCH = 10
PRODUCERS = 2
BACKLOG = 2_000
"""Most jobs enqueued but not yet completed."""


async def job_flow(
    target: str, paths: list[str], workers: int, lease: int, start_at: float, duration: float
) -> Window:
    """Producers and workers in one process; counts jobs completed inside the window.

    `paths` are the EnqueueJobs, LeaseJobs and CompleteJob methods.
    """
    enqueue_path, lease_path, complete_path = paths
    enqueue_request = jobs_pb2.EnqueueJobsRequest(
        jobs=[payloads.job_spec(i) for i in range(ENQUEUE_BATCH)]
    ).SerializeToString()
    lease_requests = [
        payloads.lease_request(f"worker-{i}", lease).SerializeToString() for i in range(workers)
    ]
    outstanding = 0
    running = True
    async with open_channels(target, 2) as (producer_channel, worker_channel):
        enqueue = raw_unary(producer_channel, enqueue_path)
        lease_call = raw_unary(worker_channel, lease_path)
        complete = raw_unary(worker_channel, complete_path)

        async def produce() -> None:
            nonlocal outstanding
            while running:
                if outstanding >= BACKLOG:
                    await asyncio.sleep(0.002)
                    continue
                outstanding += ENQUEUE_BATCH
                await enqueue(enqueue_request, timeout=30)

        async def work(index: int) -> int:
            nonlocal outstanding
            reply = await lease_call(lease_requests[index], timeout=10)
            jobs = jobs_pb2.LeaseJobsResponse.FromString(reply).jobs
            await asyncio.gather(
                *(
                    complete(
                        jobs_pb2.CompleteJobRequest(
                            job_id=job.job_id, lease_id=job.lease.lease_id
                        ).SerializeToString(),
                        timeout=30,
                    )
                    for job in jobs
                )
            )
            outstanding -= len(jobs)
            return len(jobs)

        async with rpc_errors("JobService"):
            await enqueue(enqueue_request, timeout=30)
            producers = [asyncio.create_task(produce()) for _ in range(PRODUCERS)]
            try:
                window = await closed_loop(work, workers, start_at, duration)
            finally:
                running = False
                await asyncio.gather(*producers, return_exceptions=True)
    return window


def jobs(bench: Bench, store: str, with_peers: bool) -> list[Row]:
    """Jobs completed per second through the whole flow vs the same calls on the echo."""
    name = (
        f"jobs: enqueue x{ENQUEUE_BATCH} -> lease x{LEASE} by {WORKERS} workers -> complete "
        + store_label(store)
    )
    load = {"workers": WORKERS, "lease": LEASE}
    with bench.statekeeper(store) as server:
        measured, reference = repeated(
            bench,
            lambda: bench.measure(
                job_flow,
                server,
                name,
                target=server.target,
                paths=[ENQUEUE_JOBS, LEASE_JOBS, COMPLETE_JOB],
                **load,
            ),
            lambda: bench.measure(
                job_flow,
                bench.echo,
                name + " echo",
                target=bench.echo.target,
                paths=[echo("EnqueueJobs"), echo("LeaseJobs"), echo("CompleteJob")],
                **load,
            ),
        )
    rows = [
        compare(
            name,
            measured,
            "bare echo, same calls and sizes",
            reference,
            "jobs/s",
            [Target(1_000)],
            note="latency = one lease plus its completions",
        )
    ]
    if with_peers:
        rows.append(
            peer_row(
                bench,
                name,
                measured.rate,
                "jobs/s",
                f"Redis Streams group, XREADGROUP x{LEASE}, XACK each",
                peers.redis_jobs,
                ("redis", 6379),
                workers=WORKERS,
                lease=LEASE,
                backlog=BACKLOG,
            )
        )
        rows.append(
            peer_row(
                bench,
                name,
                measured.rate,
                "jobs/s",
                f"NATS JetStream pull consumer, fetch x{LEASE}, ack each",
                peers.nats_jobs,
                ("nats", 4222),
                workers=WORKERS,
                lease=LEASE,
                backlog=BACKLOG,
            )
        )
    return rows
