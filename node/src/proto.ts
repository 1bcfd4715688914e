/**
 * The wire messages, loaded at run time from the same `.proto` files as the Python SDK's
 * generated code (`protos/src/veil/v1/` in the repository; `protos/` inside the npm package).
 * Messages are plain objects with snake_case fields; 64-bit integers are decimal strings;
 * bytes are Buffers.
 */
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { ProtocolError } from "./errors.js";

const FILES = [
  "veil/v1/common.proto",
  "veil/v1/attestation.proto",
  "veil/v1/models.proto",
  "veil/v1/inference.proto",
  "veil/v1/audit.proto",
  "veil/v1/training.proto",
  "veil/v1/watermark.proto",
  "veil/v1/scaleout.proto",
];

/** Where the `.proto` files are: inside the package, or the repository's `protos/src`. */
export function protoDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    resolve(here, "..", "..", "protos"), // node/dist/src -> node/protos (npm package)
    resolve(here, "..", "..", "..", "protos", "src"), // repository checkout
  ];
  for (const dir of candidates) {
    if (existsSync(join(dir, "veil", "v1", "common.proto"))) {
      return dir;
    }
  }
  throw new Error(`Veil .proto files not found (looked in ${candidates.join(", ")})`);
}

const CONVERSION = { longs: String, enums: Number, defaults: true, oneofs: true } as const;

let root: protobuf.Root | undefined;
function messages(): protobuf.Root {
  if (root === undefined) {
    const dir = protoDir();
    const r = new protobuf.Root();
    r.resolvePath = (_origin: string, target: string) => join(dir, target);
    r.loadSync(FILES, { keepCase: true });
    r.resolveAll();
    root = r;
  }
  return root;
}

export type Msg = Record<string, any>;

/** Serialize a `veil.v1` message given as a plain object. */
export function encode(typeName: string, value: Msg): Buffer {
  const type = messages().lookupType(`veil.v1.${typeName}`);
  return Buffer.from(type.encode(type.fromObject(value)).finish());
}

/** Parse a `veil.v1` message; any defect is a `ProtocolError`. */
export function decode(typeName: string, data: Uint8Array): Msg {
  const type = messages().lookupType(`veil.v1.${typeName}`);
  try {
    return type.toObject(type.decode(data), CONVERSION) as Msg;
  } catch {
    throw new ProtocolError(`enclave sent a malformed ${typeName}`);
  }
}

let methods: Map<string, protoLoader.MethodDefinition<Msg, Msg>> | undefined;
/** gRPC method definitions of package `veil.v1` by full path, loaded with `@grpc/proto-loader`. */
export function methodDefinitions(): Map<string, protoLoader.MethodDefinition<Msg, Msg>> {
  if (methods === undefined) {
    const definition = protoLoader.loadSync(FILES, { includeDirs: [protoDir()], keepCase: true, ...CONVERSION });
    const out = new Map<string, protoLoader.MethodDefinition<Msg, Msg>>();
    for (const value of Object.values(definition)) {
      if ("format" in value) {
        continue; // a message or enum type, not a service
      }
      for (const method of Object.values(value as protoLoader.ServiceDefinition)) {
        const m = method as protoLoader.MethodDefinition<Msg, Msg>;
        out.set(m.path, m);
      }
    }
    methods = out;
  }
  return methods;
}
