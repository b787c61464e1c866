// The well-known types statekeeper's messages use, to and from plain values:
// google.protobuf.Struct (payloads, results, custom event data) and Duration.
import type { Duration } from "./generated/google/protobuf/Duration";
import type { Struct, Struct__Output } from "./generated/google/protobuf/Struct";
import type { Value, Value__Output } from "./generated/google/protobuf/Value";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** A plain object as a google.protobuf.Struct. */
export function toStruct(object: JsonObject): Struct {
  return {
    fields: Object.fromEntries(Object.entries(object).map(([key, item]) => [key, toValue(item)])),
  };
}

function toValue(item: Json): Value {
  if (item === null) return { nullValue: "NULL_VALUE" };
  if (typeof item === "boolean") return { boolValue: item };
  if (typeof item === "number") return { numberValue: item };
  if (typeof item === "string") return { stringValue: item };
  if (Array.isArray(item)) return { listValue: { values: item.map(toValue) } };
  return { structValue: toStruct(item) };
}

/** A google.protobuf.Struct as received, as a plain object. */
export function fromStruct(struct: Struct__Output | null | undefined): JsonObject {
  return Object.fromEntries(
    Object.entries(struct?.fields ?? {}).map(([key, item]) => [key, fromValue(item)]),
  );
}

function fromValue(item: Value__Output): Json {
  switch (item.kind) {
    case "boolValue":
      return item.boolValue ?? false;
    case "numberValue":
      return item.numberValue ?? 0;
    case "stringValue":
      return item.stringValue ?? "";
    case "listValue":
      return (item.listValue?.values ?? []).map(fromValue);
    case "structValue":
      return fromStruct(item.structValue);
    default:
      return null;
  }
}

/** A number of seconds as a google.protobuf.Duration. */
export function seconds(value: number): Duration {
  const whole = Math.floor(value);
  return { seconds: String(whole), nanos: Math.round((value - whole) * 1e9) };
}
