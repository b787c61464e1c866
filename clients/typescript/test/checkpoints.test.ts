import assert from "node:assert/strict";
import { after, describe, it } from "node:test";

import { fromStruct, toStruct, unary } from "../src";
import type { PersistAgentCheckpointResponse__Output } from "../src/generated/statekeeper/v1/PersistAgentCheckpointResponse";
import type { RecoverAgentCheckpointResponse__Output } from "../src/generated/statekeeper/v1/RecoverAgentCheckpointResponse";
import { connectToServer, uniqueId } from "./support";

const server = connectToServer();
after(() => server.close());

describe("agent checkpoints", () => {
  it("recovers the newest checkpoint an agent saved", async () => {
    const agentId = uniqueId("agent");
    for (const step of [1, 2]) {
      await unary<PersistAgentCheckpointResponse__Output>((done) =>
        server.checkpoints.persistAgentCheckpoint(
          {
            checkpoint: {
              agentId,
              agentState: "AGENT_STATE_ACTIVE",
              appState: toStruct({ step }),
              metadata: { reason: `step ${step}` },
            },
          },
          done,
        ),
      );
    }
    const recovered = await unary<RecoverAgentCheckpointResponse__Output>((done) =>
      server.checkpoints.recoverAgentCheckpoint({ agentId }, done),
    );
    assert.equal(recovered.checkpoint?.agentState, "AGENT_STATE_ACTIVE");
    assert.deepEqual(fromStruct(recovered.checkpoint?.appState), { step: 2 });
    assert.equal(recovered.checkpoint?.metadata?.reason, "step 2");
  });
});
