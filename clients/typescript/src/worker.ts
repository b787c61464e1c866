// Working jobs: lease from a queue, keep the lease alive with heartbeats while the
// handler runs, then complete the job with the handler's result (or fail it).
import { unary } from "./client";
import type { Job__Output } from "./generated/statekeeper/v1/Job";
import type { JobServiceClient } from "./generated/statekeeper/v1/JobService";
import type { LeaseJobsResponse__Output } from "./generated/statekeeper/v1/LeaseJobsResponse";
import type { HeartbeatJobResponse__Output } from "./generated/statekeeper/v1/HeartbeatJobResponse";
import type { CompleteJobResponse__Output } from "./generated/statekeeper/v1/CompleteJobResponse";
import type { FailJobResponse__Output } from "./generated/statekeeper/v1/FailJobResponse";
import { type JsonObject, fromStruct, seconds, toStruct } from "./wellknown";

export interface WorkOptions {
  queue: string;
  workerId: string;
  /** How long a lease lasts without a heartbeat; heartbeats come every third of it. */
  leaseSeconds: number;
  /** How long to wait (long poll) for a job when the queue is empty. */
  waitSeconds: number;
  /** Does the job; its result is stored with the job. Throwing fails the job (retryable). */
  handle(job: Job__Output, payload: JsonObject): Promise<JsonObject>;
}

/** Lease at most one job of `queue` and work it; the job as it ended, or null if none came. */
export async function workOne(jobs: JobServiceClient, options: WorkOptions): Promise<Job__Output | null> {
  const leased = await unary<LeaseJobsResponse__Output>((done) =>
    jobs.leaseJobs(
      {
        queue: options.queue,
        workerId: options.workerId,
        maxJobs: 1,
        leaseDuration: seconds(options.leaseSeconds),
        wait: seconds(options.waitSeconds),
      },
      done,
    ),
  );
  const [job] = leased.jobs;
  if (job === undefined) return null;
  const leaseId = job.lease?.leaseId ?? "";
  const heartbeats = keepLeased(jobs, job.jobId, leaseId, options.leaseSeconds);
  let result: JsonObject;
  try {
    result = await options.handle(job, fromStruct(job.payload));
  } catch (error) {
    heartbeats.stop();
    const failed = await unary<FailJobResponse__Output>((done) =>
      jobs.failJob({ jobId: job.jobId, leaseId, error: String(error), retryable: true }, done),
    );
    return failed.job;
  }
  heartbeats.stop();
  await heartbeats.failure; // a lease lost while the handler ran cannot be completed
  const completed = await unary<CompleteJobResponse__Output>((done) =>
    jobs.completeJob({ jobId: job.jobId, leaseId, result: toStruct(result) }, done),
  );
  return completed.job;
}

interface Heartbeats {
  stop(): void;
  /** Rejects with the first failed heartbeat (a lost lease); resolves when stopped. */
  failure: Promise<void>;
  /** How many heartbeats the server acknowledged. */
  readonly sent: number;
}

/** Heartbeat the lease every third of its duration until `stop`. */
export function keepLeased(
  jobs: JobServiceClient,
  jobId: string,
  leaseId: string,
  leaseSeconds: number,
): Heartbeats {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let sent = 0;
  let settle: (error?: unknown) => void = () => undefined;
  const failure = new Promise<void>((resolve, reject) => {
    settle = (error) => (error === undefined ? resolve() : reject(error));
  });
  // Awaiting `failure` is optional: a lost lease must not crash the process unobserved.
  failure.catch(() => undefined);
  const beat = async (): Promise<void> => {
    try {
      await unary<HeartbeatJobResponse__Output>((done) =>
        jobs.heartbeatJob({ jobId, leaseId, leaseDuration: seconds(leaseSeconds) }, done),
      );
      sent += 1;
      if (!stopped) timer = setTimeout(beat, (leaseSeconds * 1000) / 3);
    } catch (error) {
      stopped = true;
      settle(error);
    }
  };
  timer = setTimeout(beat, (leaseSeconds * 1000) / 3);
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      settle();
    },
    failure,
    get sent() {
      return sent;
    },
  };
}
