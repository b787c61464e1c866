// The google.rpc details of a failed call, decoded from the `grpc-status-details-bin`
// trailer: every statekeeper error carries an ErrorInfo (reason, facts), and
// INVALID_ARGUMENT a BadRequest naming the field.
import * as fs from "node:fs";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protobuf from "protobufjs";

import { ERROR_PROTOS, includeDirs } from "../scripts/protos";
import type { BadRequest__Output } from "./generated/google/rpc/BadRequest";
import type { ErrorInfo__Output } from "./generated/google/rpc/ErrorInfo";

/** The trailer holding the google.rpc.Status of a failed call. */
export const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";
/** The `domain` of every ErrorInfo statekeeper sends. */
export const ERROR_DOMAIN = "statekeeper.dev";

export interface ErrorDetails {
  code: grpc.status;
  message: string;
  /** The reason (UPPER_SNAKE) and its facts; absent if the server sent none. */
  errorInfo?: ErrorInfo__Output;
  /** The offending fields of an INVALID_ARGUMENT. */
  badRequest?: BadRequest__Output;
}

let errorTypes: protobuf.Root | undefined;

/** google.rpc.Status and the detail messages, parsed from the googleapis files once. */
function errorRoot(): protobuf.Root {
  if (errorTypes === undefined) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) =>
      includeDirs()
        .map((dir) => path.join(dir, target))
        .find((candidate) => fs.existsSync(candidate)) ?? target;
    errorTypes = root.loadSync(ERROR_PROTOS);
  }
  return errorTypes;
}

const TO_OBJECT: protobuf.IConversionOptions = {
  longs: String,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
};

/** The status of `error` with its ErrorInfo and BadRequest, if the server sent them. */
export function errorDetails(error: grpc.ServiceError): ErrorDetails {
  const details: ErrorDetails = { code: error.code, message: error.details };
  const [encoded] = error.metadata?.get(STATUS_DETAILS_TRAILER) ?? [];
  if (!Buffer.isBuffer(encoded)) return details;
  const root = errorRoot();
  const status = root.lookupType("google.rpc.Status").decode(encoded) as unknown as {
    details: Record<string, unknown>[];
  };
  // protobufjs names Any's fields as its built-in definition spells them (type_url).
  const any = root.lookupType("google.protobuf.Any");
  const [typeUrl, value] = [any.fieldsById[1].name, any.fieldsById[2].name];
  for (const detail of status.details) {
    const url = String(detail[typeUrl]);
    const type = root.lookupType(url.slice(url.lastIndexOf("/") + 1));
    const decoded = type.toObject(type.decode(detail[value] as Uint8Array), TO_OBJECT);
    if (type.fullName === ".google.rpc.ErrorInfo") details.errorInfo = decoded as ErrorInfo__Output;
    if (type.fullName === ".google.rpc.BadRequest") details.badRequest = decoded as BadRequest__Output;
  }
  return details;
}

/** Whether `error` is a failed gRPC call (rather than a bug of the caller's). */
export function isServiceError(error: unknown): error is grpc.ServiceError {
  return error instanceof Error && "code" in error && "metadata" in error;
}
