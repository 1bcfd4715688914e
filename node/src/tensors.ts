/** Tensors as raw little-endian bytes (docs/PROTOCOL.md section 8), with typed-array views. */
import { ConfigError, ProtocolError } from "./errors.js";
import type { Msg } from "./proto.js";

export const ITEM_SIZE = {
  bool: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  int64: 8,
  uint8: 1,
  uint16: 2,
  uint32: 4,
  uint64: 8,
  float16: 2,
  float32: 4,
  float64: 8,
} as const;
export type DType = keyof typeof ITEM_SIZE;

export type TypedData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array;

/** A tensor: dtype, shape (row-major) and its little-endian bytes. */
export interface Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: Buffer;
}

const VIEW: Record<DType, (b: ArrayBuffer) => TypedData> = {
  bool: (b) => new Uint8Array(b),
  int8: (b) => new Int8Array(b),
  int16: (b) => new Int16Array(b),
  int32: (b) => new Int32Array(b),
  int64: (b) => new BigInt64Array(b),
  uint8: (b) => new Uint8Array(b),
  uint16: (b) => new Uint16Array(b),
  uint32: (b) => new Uint32Array(b),
  uint64: (b) => new BigUint64Array(b),
  float16: (b) => new Uint16Array(b), // raw IEEE half bits: Node 20 has no Float16Array
  float32: (b) => new Float32Array(b),
  float64: (b) => new Float64Array(b),
};

function count(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(shape: readonly number[]): void {
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new ConfigError(`tensor shape ${JSON.stringify(shape)} must be non-negative integers`);
  }
}

/**
 * A tensor from a typed array (dtype from its type, or given: `"bool"`, `"float16"`) or raw
 * little-endian bytes. The shape defaults to one dimension.
 */
export function tensor(values: TypedData | Buffer, shape?: readonly number[], dtype?: DType): Tensor {
  const inferred: DType | undefined =
    values instanceof Float32Array ? "float32"
    : values instanceof Float64Array ? "float64"
    : values instanceof Int8Array ? "int8"
    : values instanceof Int16Array ? "int16"
    : values instanceof Int32Array ? "int32"
    : values instanceof BigInt64Array ? "int64"
    : values instanceof Uint16Array ? "uint16"
    : values instanceof Uint32Array ? "uint32"
    : values instanceof BigUint64Array ? "uint64"
    : Buffer.isBuffer(values) ? undefined
    : "uint8";
  const type = dtype ?? inferred;
  if (type === undefined) {
    throw new ConfigError("dtype is required for a tensor given as raw bytes");
  }
  const data = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  const dims = shape ?? [data.length / ITEM_SIZE[type]];
  checkShape(dims);
  if (data.length !== count(dims) * ITEM_SIZE[type]) {
    throw new ConfigError(`tensor of ${type}${JSON.stringify(dims)} needs ${count(dims) * ITEM_SIZE[type]} bytes, got ${data.length}`);
  }
  return Object.freeze({ dtype: type, shape: Object.freeze([...dims]), data: Buffer.from(data) });
}

/** The tensor's values as a typed array (a copy; float16 as raw Uint16 bits). */
export function values(t: Tensor): TypedData {
  const copy = new Uint8Array(t.data.length);
  copy.set(t.data);
  return VIEW[t.dtype](copy.buffer);
}

export function toProto(t: Tensor): Msg {
  return { dtype: t.dtype, shape: t.shape.map((d) => String(d)), data: t.data };
}

export function fromProto(msg: Msg): Tensor {
  const dtype = String(msg["dtype"]);
  if (!(dtype in ITEM_SIZE)) {
    throw new ProtocolError(`enclave sent a tensor of unsupported dtype ${JSON.stringify(dtype)}`, "unsupported");
  }
  const shape = (msg["shape"] as string[]).map((d) => Number(d));
  const data = Buffer.from(msg["data"] as Buffer);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0) || data.length !== count(shape) * ITEM_SIZE[dtype as DType]) {
    throw new ProtocolError(`enclave sent a ${dtype} tensor whose bytes do not match its shape`);
  }
  return Object.freeze({ dtype: dtype as DType, shape: Object.freeze(shape), data });
}
