// Where the proto files are and how they are loaded: shared by the type generator
// (scripts/generate.js) and the client at run time (src/protos.ts), so the generated
// types describe exactly the objects the client sees.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

/** This package's folder (the one holding package.json), from the sources or the build. */
function packageRoot() {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  return dir;
}

/** protos/ of the repository: the contract. */
const CONTRACT = path.resolve(packageRoot(), "..", "..", "protos");
/** The google.rpc messages every statekeeper error carries (from google-proto-files). */
const ERROR_PROTOS = ["google/rpc/status.proto", "google/rpc/error_details.proto"];
/** proto-loader's options: int64 as decimal strings, enums by name, defaults filled in,
 * the set member of a oneof named; field names in camelCase. */
const LOADER_OPTIONS = { longs: String, enums: String, defaults: true, oneofs: true };
/** The same options as proto-loader-gen-types flags. */
const LOADER_FLAGS = ["--longs=String", "--enums=String", "--defaults", "--oneofs"];

/** @returns {string[]} the folders imports are resolved in: the contract, then googleapis. */
function includeDirs() {
  return [CONTRACT, path.dirname(require.resolve("google-proto-files/package.json"))];
}

/** @returns {string[]} every file of the contract, then the error details. */
function protoFiles() {
  const own = fs
    .readdirSync(path.join(CONTRACT, "statekeeper", "v1"))
    .filter((name) => name.endsWith(".proto"))
    .sort()
    .map((name) => `statekeeper/v1/${name}`);
  return [...own, ...ERROR_PROTOS];
}

module.exports = { ERROR_PROTOS, LOADER_FLAGS, LOADER_OPTIONS, includeDirs, protoFiles };
