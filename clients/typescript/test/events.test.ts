import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { after, describe, it } from "node:test";

import { errorDetails, isServiceError, isTerminal, replay, toStruct, unary } from "../src";
import type { AppendEventResponse__Output } from "../src/generated/statekeeper/v1/AppendEventResponse";
import type { AppendEventsResponse__Output } from "../src/generated/statekeeper/v1/AppendEventsResponse";
import type { EventEnvelope__Output } from "../src/generated/statekeeper/v1/EventEnvelope";
import type { EventInput } from "../src/generated/statekeeper/v1/EventInput";
import type { SeqExpectation } from "../src/generated/statekeeper/v1/SeqExpectation";
import { connectToServer, uniqueId } from "./support";

const server = connectToServer();
after(() => server.close());

function append(runId: string, input: EventInput, expectation?: SeqExpectation) {
  return unary<AppendEventResponse__Output>((done) =>
    server.events.appendEvent({ runId, input, expectation }, done),
  );
}

const started = (eventId: string): EventInput => ({
  eventId,
  event: { runStarted: { sessionId: "session-1", provider: "openai", model: "gpt-4o" } },
});
const step = (eventId: string, n: number): EventInput => ({
  eventId,
  event: { custom: { type: "step", data: toStruct({ n }) } },
});
const completed = (eventId: string): EventInput => ({
  eventId,
  event: { runCompleted: { finishReason: "FINISH_REASON_STOP", iterations: 2 } },
});

async function collect(events: AsyncIterable<EventEnvelope__Output>, until?: number) {
  const seen: EventEnvelope__Output[] = [];
  for await (const envelope of events) {
    seen.push(envelope);
    if (seen.length === until) break;
  }
  return seen;
}

describe("appending events", () => {
  it("numbers a run's events from 1 and takes the session from RunStarted", async () => {
    const runId = uniqueId("run");
    const first = await append(runId, started("e1"), { noRun: true });
    const second = await append(runId, step("e2", 1), { lastSeq: "1" });
    assert.equal(first.envelope?.seq, "1");
    assert.equal(second.envelope?.seq, "2");
    assert.equal(second.envelope?.sessionId, "session-1");
    assert.equal(second.envelope?.eventId, "e2");
  });

  it("answers a retried append with the original envelope", async () => {
    const runId = uniqueId("run");
    const original = await append(runId, started("e1"));
    const retried = await append(runId, started("e1"));
    assert.deepEqual(retried.envelope, original.envelope);
  });

  it("appends a batch atomically", async () => {
    const runId = uniqueId("run");
    const batch = await unary<AppendEventsResponse__Output>((done) =>
      server.events.appendEvents({ runId, inputs: [started("e1"), step("e2", 1)] }, done),
    );
    assert.deepEqual(
      batch.envelopes.map((envelope) => envelope.seq),
      ["1", "2"],
    );
  });

  it("refuses an append whose expectation failed, with the actual last seq in ErrorInfo", async () => {
    const runId = uniqueId("run");
    await append(runId, started("e1"));
    const refused = await append(runId, step("e2", 1), { lastSeq: "5" }).catch((error) => error);
    assert.ok(isServiceError(refused));
    const details = errorDetails(refused);
    assert.equal(details.code, grpc.status.ABORTED);
    assert.equal(details.errorInfo?.reason, "SEQ_MISMATCH");
    assert.equal(details.errorInfo?.metadata.actual_last_seq, "1");
  });
});

describe("replaying a run", () => {
  it("replays the history and follows the run live to its terminal event", async () => {
    const runId = uniqueId("run");
    await append(runId, started("e1"));
    await append(runId, step("e2", 1));
    let caughtUp: (lastSeq: string) => void = () => undefined;
    const historyDelivered = new Promise<string>((resolve) => {
      caughtUp = resolve;
    });
    const following = collect(replay(server.events, runId, { follow: true, onCaughtUp: caughtUp }));
    assert.equal(await historyDelivered, "2");
    // Appended while the replay follows: delivered live, then the stream ends.
    await append(runId, step("e3", 2));
    await append(runId, completed("e4"));
    const seen = await following;
    assert.deepEqual(
      seen.map((envelope) => [envelope.seq, envelope.eventId]),
      [
        ["1", "e1"],
        ["2", "e2"],
        ["3", "e3"],
        ["4", "e4"],
      ],
    );
    assert.ok(isTerminal(seen[3]));
    assert.deepEqual(seen[2].event?.custom?.data?.fields.n, { numberValue: 2, kind: "numberValue" });
  });

  it("resumes from the last seq it saw: nothing skipped, nothing repeated", async () => {
    const runId = uniqueId("run");
    await append(runId, started("e1"));
    for (let n = 1; n <= 4; n += 1) await append(runId, step(`s${n}`, n));
    const firstPart = await collect(replay(server.events, runId, { follow: true }), 3);
    const lastSeq = firstPart[firstPart.length - 1].seq;
    const resumed = collect(replay(server.events, runId, { afterSeq: lastSeq, follow: true }));
    await append(runId, completed("end"));
    const rest = await resumed;
    assert.deepEqual(
      [...firstPart, ...rest].map((envelope) => envelope.seq),
      ["1", "2", "3", "4", "5", "6"],
    );
    assert.ok(isTerminal(rest[rest.length - 1]));
  });
});
