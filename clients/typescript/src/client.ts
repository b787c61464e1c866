// A connection to statekeeper: one channel shared by a client of each service, sending
// the token and the namespace with every call.
import * as grpc from "@grpc/grpc-js";

import type { CheckpointServiceClient } from "./generated/statekeeper/v1/CheckpointService";
import type { EventLogServiceClient } from "./generated/statekeeper/v1/EventLogService";
import type { JobServiceClient } from "./generated/statekeeper/v1/JobService";
import type { SnapshotServiceClient } from "./generated/statekeeper/v1/SnapshotService";
import { statekeeperV1 } from "./protos";

/** The header naming the tenant; `default` when absent. */
export const NAMESPACE_HEADER = "x-statekeeper-namespace";

export interface ConnectOptions {
  /** A bearer token (sent as `authorization: Bearer <token>`), for servers with access control. */
  token?: string;
  /** The tenant every call addresses. */
  namespace?: string;
  /** TLS credentials; plaintext (h2c) when absent. */
  credentials?: grpc.ChannelCredentials;
}

/** The four services of statekeeper over one channel; `close` ends it. */
export interface Statekeeper {
  snapshots: SnapshotServiceClient;
  events: EventLogServiceClient;
  jobs: JobServiceClient;
  checkpoints: CheckpointServiceClient;
  close(): void;
}

/** Connect to `target` (host:port). */
export function connect(target: string, options: ConnectOptions = {}): Statekeeper {
  const v1 = statekeeperV1();
  const headers: [string, string][] = [];
  if (options.token) headers.push(["authorization", `Bearer ${options.token}`]);
  if (options.namespace) headers.push([NAMESPACE_HEADER, options.namespace]);
  const clientOptions: grpc.ClientOptions = { interceptors: [sending(headers)] };
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const events = new v1.EventLogService(target, credentials, clientOptions);
  const shared = { ...clientOptions, channelOverride: events.getChannel() };
  return {
    events,
    snapshots: new v1.SnapshotService(target, credentials, shared),
    jobs: new v1.JobService(target, credentials, shared),
    checkpoints: new v1.CheckpointService(target, credentials, shared),
    close: () => events.close(),
  };
}

/** An interceptor adding `headers` to the metadata of every call. */
function sending(headers: [string, string][]): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        for (const [key, value] of headers) metadata.set(key, value);
        next(metadata, listener);
      },
    });
}

/** The answer of a unary call made with a callback, as a promise:
 * `await unary<Out>((done) => client.loadSnapshot({ runId }, done))`. */
export function unary<T>(invoke: (done: grpc.requestCallback<T>) => unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    invoke((error, value) => {
      if (error) reject(error);
      else resolve(value as T);
    });
  });
}
