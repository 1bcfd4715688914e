import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (node/dist/test -> ../../..). */
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const VECTORS = join(REPO, "tests", "vectors");
export const PROTOCOL = join(VECTORS, "protocol");
