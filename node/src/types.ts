/** Typed results the client returns (the Python SDK's `ModelInfo`, `DatasetInfo`, ...). */
import type { Msg } from "./proto.js";

export interface TensorSpec {
  readonly name: string;
  readonly dtype: string;
  /** -1 for a dynamic dimension. */
  readonly shape: readonly number[];
}

export interface ModelInfo {
  readonly name: string;
  readonly version: number;
  /** `name@version`. */
  readonly ref: string;
  /** hex SHA-256 of the ONNX file. */
  readonly sha256: string;
  readonly size: number;
  readonly createdAt: Date;
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
}

function spec(m: Msg): TensorSpec {
  return Object.freeze({ name: String(m["name"]), dtype: String(m["dtype"]), shape: (m["shape"] as string[]).map(Number) });
}

export function modelInfo(m: Msg): ModelInfo {
  return Object.freeze({
    name: String(m["name"]),
    version: Number(m["version"]),
    ref: String(m["ref"]),
    sha256: String(m["sha256"]),
    size: Number(m["size"]),
    createdAt: new Date(Number(m["created_at_ms"])),
    inputs: Object.freeze((m["inputs"] as Msg[]).map(spec)),
    outputs: Object.freeze((m["outputs"] as Msg[]).map(spec)),
  });
}

export interface DatasetInfo {
  readonly sha256: string;
  readonly format: string;
  readonly rows: number;
  readonly featureShape: readonly number[];
  readonly numClasses: number;
  readonly size: number;
}

export function datasetInfo(m: Msg): DatasetInfo {
  return Object.freeze({
    sha256: String(m["sha256"]),
    format: String(m["format"]),
    rows: Number(m["rows"]),
    featureShape: Object.freeze((m["feature_shape"] as string[]).map(Number)),
    numClasses: Number(m["num_classes"]),
    size: Number(m["size"]),
  });
}

export interface BudgetInfo {
  readonly epsilonBudget: number;
  readonly epsilonSpent: number;
  readonly epsilonRemaining: number;
  readonly deltaBudget: number;
  readonly deltaSpent: number;
  readonly deltaRemaining: number;
}

export function budgetInfo(m: Msg): BudgetInfo {
  const deltaBudget = Number(m["delta_budget"]);
  const deltaSpent = Number(m["delta_spent"]);
  return Object.freeze({
    epsilonBudget: Number(m["epsilon_budget"]),
    epsilonSpent: Number(m["epsilon_spent"]),
    epsilonRemaining: Number(m["epsilon_remaining"]),
    deltaBudget,
    deltaSpent,
    deltaRemaining: Math.max(0, deltaBudget - deltaSpent),
  });
}

/** Reported after a training step; `epsilon` bounds what is spent so far from above. */
export interface TrainingProgress {
  readonly epoch: number;
  readonly step: number;
  readonly totalSteps: number;
  readonly loss: number;
  readonly epsilon: number;
}

/** The registered model, the certified training record, and the certificate that proves it. */
export interface TrainingOutcome {
  readonly model: ModelInfo;
  readonly record: Readonly<Record<string, unknown>>;
  /** Signed note over the record by the attested audit log key. */
  readonly certificate: string;
}

export type TrainingEvent =
  | { readonly type: "progress"; readonly progress: TrainingProgress }
  | { readonly type: "result"; readonly outcome: TrainingOutcome };

export interface TrainOptions {
  /** "logreg", "mlp" (default) or "cnn". */
  model?: "logreg" | "mlp" | "cnn";
  targetEpsilon: number;
  delta?: number;
  maxGradNorm?: number;
  epochs?: number;
  batchSize?: number;
  learningRate?: number;
  /** Register the result as `name@version` (default "trained"). */
  name?: string;
  accountant?: "prv" | "rdp";
  optimizer?: "sgd" | "adam";
  noise?: "secure" | "fast";
  seed?: number;
  hidden?: readonly number[];
  channels?: readonly number[];
  activation?: string;
  norm?: string;
  inputShape?: readonly number[];
}
