import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { after, describe, it } from "node:test";

import { errorDetails, fromStruct, isServiceError, keepLeased, seconds, toStruct, unary, workOne } from "../src";
import type { CompleteJobResponse__Output } from "../src/generated/statekeeper/v1/CompleteJobResponse";
import type { EnqueueJobResponse__Output } from "../src/generated/statekeeper/v1/EnqueueJobResponse";
import type { GetJobResponse__Output } from "../src/generated/statekeeper/v1/GetJobResponse";
import type { HeartbeatJobResponse__Output } from "../src/generated/statekeeper/v1/HeartbeatJobResponse";
import type { LeaseJobsResponse__Output } from "../src/generated/statekeeper/v1/LeaseJobsResponse";
import { connectToServer, uniqueId } from "./support";

const server = connectToServer();
after(() => server.close());

function enqueue(queue: string, payload: Record<string, string>) {
  return unary<EnqueueJobResponse__Output>((done) =>
    server.jobs.enqueueJob({ job: { queue, kind: "email", payload: toStruct(payload) } }, done),
  );
}

describe("working jobs", () => {
  it("enqueues, leases, heartbeats and completes a job", async () => {
    const queue = uniqueId("queue");
    const enqueued = await enqueue(queue, { to: "ada@example.com" });
    assert.equal(enqueued.job?.state, "JOB_STATE_AVAILABLE");
    const leased = await unary<LeaseJobsResponse__Output>((done) =>
      server.jobs.leaseJobs({ queue, workerId: "worker-1", maxJobs: 1, leaseDuration: seconds(30) }, done),
    );
    const [job] = leased.jobs;
    assert.equal(job.jobId, enqueued.job?.jobId);
    assert.equal(job.state, "JOB_STATE_RUNNING");
    const leaseId = job.lease?.leaseId ?? "";
    const beat = await unary<HeartbeatJobResponse__Output>((done) =>
      server.jobs.heartbeatJob({ jobId: job.jobId, leaseId, leaseDuration: seconds(60) }, done),
    );
    assert.equal(beat.cancelled, false);
    assert.ok(Number(beat.lease?.expireTime?.seconds) > Number(job.lease?.expireTime?.seconds));
    const done = await unary<CompleteJobResponse__Output>((callback) =>
      server.jobs.completeJob({ jobId: job.jobId, leaseId, result: toStruct({ sent: true }) }, callback),
    );
    assert.equal(done.job?.state, "JOB_STATE_SUCCEEDED");
    assert.deepEqual(fromStruct(done.job?.result), { sent: true });
  });

  it("keeps a lease alive with heartbeats while a handler outlasts the lease", async () => {
    const queue = uniqueId("queue");
    await enqueue(queue, { to: "grace@example.com" });
    const leaseSeconds = 1;
    const worked = await workOne(server.jobs, {
      queue,
      workerId: "worker-2",
      leaseSeconds,
      waitSeconds: 1,
      async handle(_job, payload) {
        await sleep(leaseSeconds * 2.5 * 1000);
        return { sentTo: payload.to };
      },
    });
    assert.equal(worked?.state, "JOB_STATE_SUCCEEDED");
    assert.deepEqual(fromStruct(worked?.result), { sentTo: "grace@example.com" });
    assert.equal(worked?.attempt, 1);
  });

  it("loses a lease nobody heartbeats: completing it then is FAILED_PRECONDITION", async () => {
    const queue = uniqueId("queue");
    await enqueue(queue, { to: "linus@example.com" });
    const leased = await unary<LeaseJobsResponse__Output>((done) =>
      server.jobs.leaseJobs({ queue, workerId: "worker-3", maxJobs: 1, leaseDuration: seconds(0.2) }, done),
    );
    const [job] = leased.jobs;
    await sleep(600);
    const refused = await unary<CompleteJobResponse__Output>((done) =>
      server.jobs.completeJob({ jobId: job.jobId, leaseId: job.lease?.leaseId ?? "" }, done),
    ).catch((error) => error);
    assert.ok(isServiceError(refused));
    assert.equal(errorDetails(refused).code, grpc.status.FAILED_PRECONDITION);
    const current = await unary<GetJobResponse__Output>((done) => server.jobs.getJob({ jobId: job.jobId }, done));
    assert.notEqual(current.job?.state, "JOB_STATE_SUCCEEDED");
  });

  it("reports a lost lease through the heartbeats' failure", async () => {
    const queue = uniqueId("queue");
    await enqueue(queue, { to: "barbara@example.com" });
    const leased = await unary<LeaseJobsResponse__Output>((done) =>
      server.jobs.leaseJobs({ queue, workerId: "worker-4", maxJobs: 1, leaseDuration: seconds(30) }, done),
    );
    const [job] = leased.jobs;
    const heartbeats = keepLeased(server.jobs, job.jobId, "not-the-lease", 0.3);
    await assert.rejects(heartbeats.failure, (error: unknown) => isServiceError(error));
    assert.equal(heartbeats.sent, 0);
  });
});
