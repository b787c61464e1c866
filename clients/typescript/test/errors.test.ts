import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { after, describe, it } from "node:test";

import { ERROR_DOMAIN, errorDetails, isServiceError, unary } from "../src";
import type { LoadSnapshotResponse__Output } from "../src/generated/statekeeper/v1/LoadSnapshotResponse";
import { connectToServer, uniqueId } from "./support";

const server = connectToServer();
after(() => server.close());

function load(runId: string) {
  return unary<LoadSnapshotResponse__Output>((done) => server.snapshots.loadSnapshot({ runId }, done));
}

describe("error details", () => {
  it("reads ErrorInfo and BadRequest of a bad request from grpc-status-details-bin", async () => {
    const refused = await load("../../etc/passwd").catch((error) => error);
    assert.ok(isServiceError(refused));
    const details = errorDetails(refused);
    assert.equal(details.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(details.errorInfo?.reason, "INVALID_ARGUMENT");
    assert.equal(details.errorInfo?.domain, ERROR_DOMAIN);
    assert.deepEqual(details.errorInfo?.metadata, { field: "run_id" });
    assert.deepEqual(
      details.badRequest?.fieldViolations.map((violation) => violation.field),
      ["run_id"],
    );
  });

  it("reads the reason and facts of a missing record", async () => {
    const runId = uniqueId("run");
    const refused = await load(runId).catch((error) => error);
    assert.ok(isServiceError(refused));
    const details = errorDetails(refused);
    assert.equal(details.code, grpc.status.NOT_FOUND);
    assert.equal(details.errorInfo?.reason, "SNAPSHOT_NOT_FOUND");
    assert.deepEqual(details.errorInfo?.metadata, { run_id: runId });
    assert.equal(details.badRequest, undefined);
  });
});
