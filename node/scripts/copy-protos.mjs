// `npm pack`: copy the repository's .proto files into the package (protos/veil/v1/*.proto).
import { cpSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "..", "..", "protos", "src", "veil", "v1");
const target = join(here, "..", "protos", "veil", "v1");
mkdirSync(target, { recursive: true });
for (const name of readdirSync(source).filter((n) => n.endsWith(".proto"))) {
  cpSync(join(source, name), join(target, name));
}
