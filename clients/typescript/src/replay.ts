// Reading a run's events with ReplayEvents: the history after a seq, then (following)
// live events until the run's terminal event.
import type { EventEnvelope__Output } from "./generated/statekeeper/v1/EventEnvelope";
import type { EventLogServiceClient } from "./generated/statekeeper/v1/EventLogService";
import type { ReplayEventsResponse__Output } from "./generated/statekeeper/v1/ReplayEventsResponse";

export interface ReplayOptions {
  /** Start after this seq (a decimal string, as int64s are): "0" for the whole run. To
   * resume, pass the seq of the last envelope seen: nothing is skipped or repeated. */
  afterSeq?: string;
  /** Keep the stream open for live events; it ends after the run's terminal event. */
  follow?: boolean;
  /** Called when the history is delivered and (following) live events come next, with
   * the run's last seq at that moment. */
  onCaughtUp?: (lastSeq: string) => void;
}

/** The envelopes of `runId` in seq order. Leaving the loop early cancels the stream;
 * a failed stream throws its grpc.ServiceError. */
export async function* replay(
  events: EventLogServiceClient,
  runId: string,
  options: ReplayOptions = {},
): AsyncGenerator<EventEnvelope__Output, void, undefined> {
  const call = events.replayEvents({
    runId,
    afterSeq: options.afterSeq ?? "0",
    follow: options.follow ?? false,
  });
  let ended = false;
  call.on("end", () => {
    ended = true;
  });
  try {
    for await (const message of call as AsyncIterable<ReplayEventsResponse__Output>) {
      if (message.message === "batch") yield* message.batch?.envelopes ?? [];
      else if (message.message === "caughtUp") options.onCaughtUp?.(message.caughtUp?.lastSeq ?? "0");
      // Heartbeats only keep an idle stream open.
    }
  } finally {
    if (!ended) call.cancel();
  }
}

/** Whether `envelope` ends its run (completed, failed or cancelled). */
export function isTerminal(envelope: EventEnvelope__Output): boolean {
  const kind = envelope.event?.kind;
  return kind === "runCompleted" || kind === "runFailed" || kind === "runCancelled";
}
