// Generates the TypeScript types of statekeeper's protos (and of the google.rpc error
// details) into src/generated/ with proto-loader-gen-types, from the files themselves:
// no protoc, nothing downloaded. src/protos.ts loads the same files at run time with
// the same options, so the types describe exactly the objects the client sees.
"use strict";
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const { LOADER_FLAGS, includeDirs, protoFiles } = require("./protos.js");

const out = path.join(__dirname, "..", "src", "generated");
fs.rmSync(out, { recursive: true, force: true });
const generator = require.resolve("@grpc/proto-loader/build/bin/proto-loader-gen-types.js");
execFileSync(
  process.execPath,
  [
    generator,
    // The files first: --includeDirs takes every argument after it.
    ...protoFiles(),
    "--grpcLib=@grpc/grpc-js",
    `--outDir=${out}`,
    ...LOADER_FLAGS,
    "--includeDirs",
    ...includeDirs(),
  ],
  { stdio: "inherit" },
);
