// What every test needs: a connection to the server under test, and ids of its own.
import { randomUUID } from "node:crypto";

import { connect, type Statekeeper } from "../src";

/** The server under test: STATEKEEPER_TARGET (host:port), with STATEKEEPER_TOKEN if its
 * access control demands one (the variables the Python client reads). */
export function connectToServer(): Statekeeper {
  const target = process.env.STATEKEEPER_TARGET;
  if (!target) throw new Error("set STATEKEEPER_TARGET to the host:port of a statekeeper server");
  return connect(target, { token: process.env.STATEKEEPER_TOKEN || undefined });
}

/** A new id starting with `prefix`, so tests sharing a server never meet. */
export function uniqueId(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}
