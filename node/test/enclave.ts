// Starts a real enclave (test/serve_enclave.py: the `veil serve` server, simulated TEE) for a test.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface, type Interface } from "node:readline";
import { REPO } from "./paths.js";

export interface Launched {
  address: string;
  root_pem: string;
  api_keys: Record<string, string>;
  data_dir: string;
  measurement: string;
  model: string;
  dataset: string;
  python: string;
}

export function python(): string {
  const fromEnv = process.env["VEIL_PYTHON"];
  if (fromEnv) return fromEnv;
  const venv = join(REPO, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export class Enclave {
  private constructor(
    readonly info: Launched,
    private readonly proc: ChildProcessWithoutNullStreams,
    private readonly lines: Interface,
    private readonly queue: string[],
    private waiting: ((line: string) => void) | undefined,
  ) {}

  /** Start `script` (a launcher in node/test that prints one JSON line, then obeys stdin). */
  static async start(script = "serve_enclave.py", args: readonly string[] = []): Promise<Enclave> {
    const proc = spawn(python(), [join(REPO, "node", "test", script), ...args], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    let stderr = "";
    proc.stderr.on("data", (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    const lines = createInterface({ input: proc.stdout });
    const queue: string[] = [];
    const enclave = new Enclave({} as Launched, proc, lines, queue, undefined);
    lines.on("line", (line) => {
      const w = enclave.waiting;
      if (w) { enclave.waiting = undefined; w(line); } else queue.push(line);
    });
    const first = await Promise.race([
      enclave.next(),
      new Promise<string>((_, reject) => proc.once("exit", (code) => reject(new Error(`enclave exited (${code}): ${stderr}`)))),
    ]);
    Object.assign(enclave.info, JSON.parse(first) as Launched);
    return enclave;
  }

  private next(): Promise<string> {
    const queued = this.queue.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => { this.waiting = resolve; });
  }

  async command(name: "calls" | "rotate" | "sealed" | "sessions"): Promise<unknown> {
    this.proc.stdin.write(`${name}\n`);
    return JSON.parse(await this.next());
  }

  async stop(): Promise<void> {
    const exited = new Promise<void>((resolve) => this.proc.once("exit", () => resolve()));
    this.proc.stdin.end("quit\n");
    await exited;
    this.lines.close();
  }
}
