// A TypeScript client of statekeeper over @grpc/grpc-js.
export { connect, unary, NAMESPACE_HEADER, type ConnectOptions, type Statekeeper } from "./client";
export { errorDetails, isServiceError, ERROR_DOMAIN, type ErrorDetails } from "./errors";
export { replay, isTerminal, type ReplayOptions } from "./replay";
export { workOne, keepLeased, type WorkOptions } from "./worker";
export { toStruct, fromStruct, seconds, type Json, type JsonObject } from "./wellknown";
