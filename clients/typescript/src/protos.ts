// The gRPC services of statekeeper, loaded from protos/ at run time by proto-loader
// (no protoc, no generated code to load): their types come from src/generated/.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { LOADER_OPTIONS, includeDirs, protoFiles } from "../scripts/protos";
import type { ProtoGrpcType as Checkpoints } from "./generated/checkpoints";
import type { ProtoGrpcType as Events } from "./generated/events";
import type { ProtoGrpcType as Jobs } from "./generated/jobs";
import type { ProtoGrpcType as Snapshots } from "./generated/snapshots";

/** The package statekeeper.v1 as loaded: one client constructor per service. */
export type StatekeeperV1 = (Checkpoints & Events & Jobs & Snapshots)["statekeeper"]["v1"];

let loaded: StatekeeperV1 | undefined;

/** The services of statekeeper.v1, loaded once. */
export function statekeeperV1(): StatekeeperV1 {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(protoFiles(), {
      ...LOADER_OPTIONS,
      includeDirs: includeDirs(),
    });
    const api = grpc.loadPackageDefinition(definition) as unknown as Checkpoints &
      Events &
      Jobs &
      Snapshots;
    loaded = api.statekeeper.v1;
  }
  return loaded;
}
