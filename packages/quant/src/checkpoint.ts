import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  describeValue,
  type ModelConfig,
  openSafetensors,
  QError,
  type SafetensorsReader,
  Tensor,
  writeFileAtomic,
  writeSafetensors,
} from '@q/core';
import type { QuantizedModel } from './model';
import { type Recipe, validateRecipe } from './recipes';
import type { Int4Weights, IntegerScale, LayerPlan, QuantizedLinear, QuantWeights } from './types';

/**
 * The quantized checkpoint: a directory holding `manifest.json` and safetensors files (one per transformer
 * layer, `layers-00000.safetensors`, …, plus `other.safetensors` for embeddings, final norm, lm_head).
 * Tensor names per linear layer `<name>`:
 * - int4: `<name>.qweight` u8 [n, kPadded/2] (plain packing, low nibble first; 1-D when n·kPadded is odd),
 *   `<name>.scales` f32 [n, groups], `<name>.zeros` i8 [n, groups] (asymmetric), and with Integer Scale
 *   `<name>.iscale` i32 [n, groups], `<name>.iscale_channel` f32 [n], `<name>.iscale_unit` f32 [n];
 * - int8: `<name>.qweight` i8 [n, k], `<name>.scales` f32 [n];
 * - f32: `<name>.weight` f32 [n, k];
 * - `<name>.act_scale` f32 [1] for static activations; `<name>.bias` f32 [n].
 * Float tensors keep their Hugging Face names (norm gains already LAE-folded), in f32, or in the source's
 * f16/bf16 when a streaming writer passed them through; `loadQuantized` widens those to f32.
 */

export const QUANT_FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';
export const OTHER_FILE = 'other.safetensors';

/** One source file of the float model and its hash. */
export interface SourceFile {
  readonly path: string;
  readonly bytes: number;
  readonly sha256: string;
}

/** How one linear layer is stored. */
export interface ManifestLayer {
  readonly name: string;
  readonly file: string;
  readonly plan: LayerPlan;
  readonly format: QuantWeights['format'];
  readonly n: number;
  readonly k: number;
  readonly kPadded?: number;
  readonly groupSize?: number;
  readonly symmetric?: boolean;
  readonly amplifierBits?: number;
  readonly bias: boolean;
}

export interface Manifest {
  readonly formatVersion: number;
  readonly producer: string;
  readonly recipe: Recipe;
  readonly config: ModelConfig;
  readonly source: readonly SourceFile[];
  readonly files: readonly string[];
  readonly layers: readonly ManifestLayer[];
  /** Float tensors: name → file. */
  readonly tensors: Readonly<Record<string, string>>;
  /**
   * sha256 (hex) of every file written beside the manifest (the safetensors files and any carried file such as
   * the tokenizer), computed while writing. Absent in checkpoints written before it existed.
   */
  readonly sha256?: Readonly<Record<string, string>>;
  /** Per-layer error report, when given. */
  readonly report?: unknown;
}

/**
 * sha256 of a file, read in 16 MiB chunks.
 *
 * @example
 * ```ts
 * sha256File('stories260K.bin') // 'b0a507e7...'
 * ```
 */
export function sha256File(file: string): string {
  const h = createHash('sha256');
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new QError(
      'E_IO',
      `Expected a readable source file for ${file} but received ${(e as Error).message}`,
      { cause: e },
    );
  }
  try {
    const buf = Buffer.allocUnsafe(16 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/**
 * Describes source files (path, size, sha256) for a manifest.
 *
 * @example
 * ```ts
 * describeSources(['model.safetensors'])[0].sha256
 * ```
 */
export function describeSources(files: readonly string[]): SourceFile[] {
  return files.map((f) => ({ path: path.basename(f), bytes: fs.statSync(f).size, sha256: sha256File(f) }));
}

/**
 * The safetensors tensors of one quantized linear layer, under the names of the checkpoint format.
 *
 * @example
 * ```ts
 * [...linearTensors(model.linears.get('model.layers.0.mlp.up_proj')!).keys()]
 * // ['model.layers.0.mlp.up_proj.qweight', '….scales', '….iscale', '….iscale_channel', '….iscale_unit']
 * ```
 */
export function linearTensors(l: QuantizedLinear): Map<string, Tensor> {
  const t = new Map<string, Tensor>();
  const w = l.weights;
  if (w.format === 'int4') {
    const count = w.n * w.kPadded;
    const shape = count % 2 === 0 ? [w.n, w.kPadded / 2] : [w.packed.length];
    const groups = w.kPadded / w.groupSize;
    t.set(`${l.name}.qweight`, new Tensor('u8', shape, w.packed));
    t.set(`${l.name}.scales`, new Tensor('f32', [w.n, groups], w.scales));
    if (w.zeros) t.set(`${l.name}.zeros`, new Tensor('i8', [w.n, groups], w.zeros));
    if (w.intScale) {
      t.set(`${l.name}.iscale`, new Tensor('i32', [w.n, groups], w.intScale.q));
      t.set(`${l.name}.iscale_channel`, new Tensor('f32', [w.n], w.intScale.channelScale));
      t.set(`${l.name}.iscale_unit`, new Tensor('f32', [w.n], w.intScale.unit));
    }
  } else if (w.format === 'int8') {
    t.set(`${l.name}.qweight`, new Tensor('i8', [w.n, w.k], w.data));
    t.set(`${l.name}.scales`, new Tensor('f32', [w.n], w.scales));
  } else {
    t.set(`${l.name}.weight`, new Tensor('f32', [w.n, w.k], w.data));
  }
  if (l.act === 'static' && l.staticScale !== undefined) {
    t.set(`${l.name}.act_scale`, new Tensor('f32', [1], Float32Array.of(l.staticScale)));
  }
  if (l.bias) t.set(`${l.name}.bias`, new Tensor('f32', [w.n], l.bias));
  return t;
}

function manifestLayer(l: QuantizedLinear, plan: LayerPlan, file: string): ManifestLayer {
  const w = l.weights;
  const base = { name: l.name, file, plan, format: w.format, n: w.n, k: w.k, bias: l.bias !== undefined };
  if (w.format !== 'int4') return base;
  return {
    ...base,
    kPadded: w.kPadded,
    groupSize: w.groupSize,
    symmetric: w.symmetric,
    ...(w.intScale ? { amplifierBits: w.intScale.amplifierBits } : {}),
  };
}

/** The transformer layer index of a tensor name, or -1. */
function layerIndex(name: string): number {
  const m = /^model\.layers\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : -1;
}

/**
 * The file name holding transformer layer `i`.
 *
 * @example
 * ```ts
 * layerFile(3) // 'layers-00003.safetensors'
 * ```
 */
export function layerFile(i: number): string {
  return `layers-${String(i).padStart(5, '0')}.safetensors`;
}

/** A quantized checkpoint being written file by file (`createQuantizedWriter`). */
export type QuantizedWriter = ReturnType<typeof createQuantizedWriter>;

/**
 * Writes a quantized checkpoint file by file, for streaming quantizers that never hold the whole model:
 * files go to a temporary sibling directory that `commit()` renames into place (after writing the manifest).
 *
 * @example
 * ```ts
 * const w = createQuantizedWriter('out', { config, recipe, source: describeSources(['model.safetensors']) });
 * w.writeFile(layerFile(0), linears, plans, new Map());
 * w.writeFile(OTHER_FILE, [], [], floatTensors);
 * w.commit();
 * ```
 */
export function createQuantizedWriter(
  dir: string,
  info: { config: ModelConfig; recipe: Recipe; source?: readonly SourceFile[]; overwrite?: boolean },
): {
  readonly tempDir: string;
  writeFile(
    file: string,
    linears: readonly QuantizedLinear[],
    plans: readonly LayerPlan[],
    tensors: ReadonlyMap<string, Tensor>,
  ): void;
  /** Writes a file that is not a safetensors file of the model (e.g. the tokenizer), hashed like the rest. */
  writeExtra(file: string, bytes: Uint8Array): void;
  commit(report?: unknown): void;
  abort(): void;
} {
  const finalDir = path.resolve(dir);
  if (fs.existsSync(finalDir) && !info.overwrite) {
    throw new QError(
      'E_EXISTS',
      `Expected no existing path for the quantized checkpoint ${finalDir} but received one (pass overwrite: true)`,
    );
  }
  const tempDir = path.join(
    path.dirname(finalDir),
    `.${path.basename(finalDir)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
  );
  try {
    fs.mkdirSync(tempDir, { recursive: false });
  } catch (e) {
    throw new QError('E_IO', `Expected to create ${tempDir} but received ${(e as Error).message}`, {
      cause: e,
    });
  }
  const files: string[] = [];
  const hashes: Record<string, string> = {};
  const layers: ManifestLayer[] = [];
  const tensorsIndex: Record<string, string> = {};
  let done = false;
  const abort = (): void => {
    if (done) return;
    done = true;
    fs.rmSync(tempDir, { recursive: true, force: true });
  };
  const checkNewFile = (file: string): void => {
    if (done) throw new QError('E_IO', `Expected an open quantized writer for ${finalDir} but it was closed`);
    if (file in hashes || file === MANIFEST_FILE || path.basename(file) !== file) {
      throw new QError(
        'E_ARG',
        `Expected a new plain file name for ${finalDir} but received ${describeValue(file)}`,
      );
    }
  };
  return {
    tempDir,
    writeFile(file, linears, plans, tensors) {
      checkNewFile(file);
      try {
        const all = new Map<string, Tensor>();
        linears.forEach((l, i) => {
          const plan = plans[i];
          if (!plan || plan.name !== l.name) {
            throw new QError(
              'E_ARG',
              `Expected the plan of ${l.name} at position ${i} but received ${describeValue(plan?.name)}`,
            );
          }
          for (const [n, t] of linearTensors(l)) all.set(n, t);
          layers.push(manifestLayer(l, plan, file));
        });
        for (const [n, t] of tensors) {
          if (all.has(n)) throw new QError('E_ARG', `Expected unique tensor names but ${n} is written twice`);
          all.set(n, t);
          tensorsIndex[n] = file;
        }
        const h = createHash('sha256');
        writeSafetensors(
          path.join(tempDir, file),
          all,
          { format: 'q-quant' },
          { onBytes: (b) => h.update(b) },
        );
        hashes[file] = h.digest('hex');
        files.push(file);
      } catch (e) {
        abort();
        throw e;
      }
    },
    writeExtra(file, bytes) {
      checkNewFile(file);
      try {
        writeFileAtomic(path.join(tempDir, file), (write) => write(bytes));
        hashes[file] = createHash('sha256').update(bytes).digest('hex');
      } catch (e) {
        abort();
        throw e;
      }
    },
    commit(report) {
      if (done)
        throw new QError('E_IO', `Expected an open quantized writer for ${finalDir} but it was closed`);
      try {
        const manifest: Manifest = {
          formatVersion: QUANT_FORMAT_VERSION,
          producer: '@q/quant',
          recipe: info.recipe,
          config: info.config,
          source: info.source ?? [],
          files,
          layers,
          tensors: tensorsIndex,
          sha256: hashes,
          ...(report !== undefined ? { report } : {}),
        };
        const text = new TextEncoder().encode(`${JSON.stringify(manifest, null, 2)}\n`);
        writeFileAtomic(path.join(tempDir, MANIFEST_FILE), (write) => write(text));
        if (fs.existsSync(finalDir)) {
          const old = `${tempDir}.old`;
          fs.renameSync(finalDir, old);
          fs.renameSync(tempDir, finalDir);
          fs.rmSync(old, { recursive: true, force: true });
        } else {
          fs.renameSync(tempDir, finalDir);
        }
        done = true;
      } catch (e) {
        abort();
        throw isQ(e)
          ? e
          : new QError('E_IO', `Expected to write ${finalDir} but received ${(e as Error).message}`, {
              cause: e,
            });
      }
    },
    abort,
  };
}

function isQ(e: unknown): e is QError {
  return e instanceof QError;
}

export interface SaveOptions {
  /** Source model files to hash into the manifest. */
  readonly sourceFiles?: readonly string[];
  /** Precomputed source descriptions (instead of sourceFiles). */
  readonly source?: readonly SourceFile[];
  /** Per-layer report stored in the manifest. */
  readonly report?: unknown;
  /** Replace an existing directory (atomically). Default false: an existing path is `E_EXISTS`. */
  readonly overwrite?: boolean;
}

/**
 * Saves a quantized model as a checkpoint directory, atomically (temporary directory, then rename).
 *
 * @example
 * ```ts
 * saveQuantized('stories260K-fptq', model, { sourceFiles: ['stories260K.bin'], report });
 * ```
 */
export function saveQuantized(dir: string, model: QuantizedModel, options: SaveOptions = {}): void {
  const source = options.source ?? describeSources(options.sourceFiles ?? []);
  const w = createQuantizedWriter(dir, {
    config: model.config,
    recipe: model.recipe,
    source,
    ...(options.overwrite ? { overwrite: true } : {}),
  });
  const planOf = new Map(model.plans.map((p) => [p.name, p]));
  const byLayer = new Map<
    number,
    { linears: QuantizedLinear[]; plans: LayerPlan[]; tensors: Map<string, Tensor> }
  >();
  const bucket = (i: number) => {
    let b = byLayer.get(i);
    if (!b) {
      b = { linears: [], plans: [], tensors: new Map() };
      byLayer.set(i, b);
    }
    return b;
  };
  for (const [name, l] of model.linears) {
    const plan = planOf.get(name);
    if (!plan) throw new QError('E_ARG', `Expected a plan for layer ${name} but received none`);
    const b = bucket(layerIndex(name));
    b.linears.push(l);
    b.plans.push(plan);
  }
  for (const [name, t] of model.tensors) bucket(layerIndex(name)).tensors.set(name, t);
  try {
    for (const i of [...byLayer.keys()].sort((a, b) => a - b)) {
      const b = byLayer.get(i);
      if (b) w.writeFile(i < 0 ? OTHER_FILE : layerFile(i), b.linears, b.plans, b.tensors);
    }
    w.commit(options.report);
  } catch (e) {
    w.abort();
    throw e;
  }
}

function fmt(dir: string, problem: string): QError {
  return new QError('E_FORMAT', `Invalid quantized checkpoint ${dir}: ${problem}`);
}

/**
 * Reads and validates a checkpoint's manifest: `E_VERSION` for another format version, `E_FORMAT` for a
 * malformed manifest, `E_ARG` for a bad recipe option.
 *
 * @example
 * ```ts
 * readManifest('stories260K-fptq').recipe.name // 'fptq'
 * ```
 */
export function readManifest(dir: string): Manifest {
  const file = path.join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QError(
      'E_IO',
      `Expected a readable ${MANIFEST_FILE} in ${dir} but received ${(e as Error).message}`,
      { cause: e },
    );
  }
  let m: Partial<Manifest>;
  try {
    m = JSON.parse(text) as Partial<Manifest>;
  } catch (e) {
    throw fmt(dir, `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
  }
  if (typeof m !== 'object' || m === null) throw fmt(dir, `expected a JSON object in ${MANIFEST_FILE}`);
  if (m.formatVersion !== QUANT_FORMAT_VERSION) {
    throw new QError(
      'E_VERSION',
      `Expected quantized checkpoint formatVersion ${QUANT_FORMAT_VERSION} for ${file} but received ${describeValue(m.formatVersion)}`,
    );
  }
  validateRecipe(m.recipe);
  if (typeof m.config !== 'object' || m.config === null || !Number.isSafeInteger(m.config.numLayers)) {
    throw fmt(dir, `expected a model config in ${MANIFEST_FILE} but received ${describeValue(m.config)}`);
  }
  if (
    !Array.isArray(m.files) ||
    !Array.isArray(m.layers) ||
    typeof m.tensors !== 'object' ||
    m.tensors === null
  ) {
    throw fmt(dir, `expected files, layers and tensors in ${MANIFEST_FILE}`);
  }
  for (const f of m.files) {
    if (typeof f !== 'string' || path.basename(f) !== f) throw fmt(dir, `bad file name ${describeValue(f)}`);
  }
  if (m.sha256 !== undefined) {
    if (typeof m.sha256 !== 'object' || m.sha256 === null) throw fmt(dir, 'expected sha256 to be an object');
    for (const [f, h] of Object.entries(m.sha256)) {
      if (path.basename(f) !== f || typeof h !== 'string' || !/^[0-9a-f]{64}$/.test(h))
        throw fmt(dir, `bad sha256 entry ${describeValue(f)}: ${describeValue(h)}`);
    }
    for (const f of m.files)
      if (!(f in m.sha256)) throw fmt(dir, `file ${f} has no sha256 in ${MANIFEST_FILE}`);
  }
  return m as Manifest;
}

/** What `verifyQuantized` checked. */
export interface VerifyResult {
  /** False for a checkpoint whose manifest predates file hashes: nothing could be checked. */
  readonly hashed: boolean;
  /** Files whose sha256 matched the manifest. */
  readonly files: readonly string[];
}

/**
 * Checks every file a checkpoint's manifest hashes against its sha256; throws `E_FORMAT` naming the first file
 * that differs (or is missing). A manifest without hashes (written before they existed) gives
 * `{ hashed: false }`.
 *
 * @example
 * ```ts
 * verifyQuantized('stories260K-fptq'); // { hashed: true, files: ['layers-00000.safetensors', …] }
 * ```
 */
export function verifyQuantized(dir: string, manifest: Manifest = readManifest(dir)): VerifyResult {
  if (manifest.sha256 === undefined) return { hashed: false, files: [] };
  const files: string[] = [];
  for (const [file, want] of Object.entries(manifest.sha256)) {
    const full = path.join(dir, file);
    if (!fs.existsSync(full)) throw fmt(dir, `file ${file} listed in ${MANIFEST_FILE} is missing`);
    const got = sha256File(full);
    if (got !== want)
      throw new QError(
        'E_FORMAT',
        `Expected sha256 ${want} for ${file} in the quantized checkpoint ${dir} but received ${got} (the file changed after it was written)`,
        { details: { file } },
      );
    files.push(file);
  }
  return { hashed: true, files };
}

function readExact<D extends 'u8' | 'i8' | 'i32' | 'f32'>(
  r: SafetensorsReader,
  dir: string,
  name: string,
  dtype: D,
  count: number,
): Tensor<D>['data'] {
  if (!r.has(name)) throw fmt(dir, `tensor ${name} is missing from ${path.basename(r.path)}`);
  const t = r.read(name);
  if (t.dtype !== dtype || t.size !== count) {
    throw fmt(
      dir,
      `expected ${dtype} with ${count} elements for ${name} but received ${t.dtype} with ${t.size}`,
    );
  }
  return t.data as Tensor<D>['data'];
}

/** Options of `loadQuantized`. */
export interface LoadQuantizedOptions {
  /** Check every file against the sha256 in the manifest first (default true; older manifests have none). */
  readonly verify?: boolean;
}

/**
 * Loads and validates a quantized checkpoint written by `saveQuantized` or a streaming writer. Files are first
 * checked against the manifest's sha256 (`E_FORMAT` naming the file that differs), unless `verify: false`.
 *
 * @example
 * ```ts
 * const { model, manifest } = loadQuantized('stories260K-fptq');
 * linearForward(x, m, model.linears.get('model.layers.0.self_attn.q_proj')!);
 * ```
 */
export function loadQuantized(
  dir: string,
  options: LoadQuantizedOptions = {},
): { model: QuantizedModel; manifest: Manifest; verified: VerifyResult } {
  const manifest = readManifest(dir);
  const verified = options.verify === false ? { hashed: false, files: [] } : verifyQuantized(dir, manifest);
  const readers = new Map<string, SafetensorsReader>();
  const reader = (file: string): SafetensorsReader => {
    if (!manifest.files.includes(file)) throw fmt(dir, `file ${file} is not listed in ${MANIFEST_FILE}`);
    let r = readers.get(file);
    if (!r) {
      r = openSafetensors(path.join(dir, file));
      readers.set(file, r);
    }
    return r;
  };
  try {
    const linears = new Map<string, QuantizedLinear>();
    const plans: LayerPlan[] = [];
    for (const l of manifest.layers) {
      const r = reader(l.file);
      const { name, n, k } = l;
      if (!Number.isSafeInteger(n) || !Number.isSafeInteger(k) || n < 1 || k < 1)
        throw fmt(dir, `bad shape for ${name}`);
      let weights: QuantWeights;
      if (l.format === 'int4') {
        const kPadded = l.kPadded ?? 0;
        const groupSize = l.groupSize ?? 0;
        if (!(kPadded >= k && groupSize > 0 && kPadded % groupSize === 0)) {
          throw fmt(dir, `bad int4 layout for ${name}: k=${k}, kPadded=${kPadded}, groupSize=${groupSize}`);
        }
        const groups = kPadded / groupSize;
        const packed = readExact(r, dir, `${name}.qweight`, 'u8', Math.ceil((n * kPadded) / 2));
        const scales = readExact(r, dir, `${name}.scales`, 'f32', n * groups);
        let w: Int4Weights = {
          format: 'int4',
          n,
          k,
          kPadded,
          groupSize,
          symmetric: l.symmetric !== false,
          packed,
          scales,
        };
        if (l.symmetric === false) w = { ...w, zeros: readExact(r, dir, `${name}.zeros`, 'i8', n * groups) };
        if (l.amplifierBits !== undefined) {
          const intScale: IntegerScale = {
            amplifierBits: l.amplifierBits,
            q: readExact(r, dir, `${name}.iscale`, 'i32', n * groups),
            channelScale: readExact(r, dir, `${name}.iscale_channel`, 'f32', n),
            unit: readExact(r, dir, `${name}.iscale_unit`, 'f32', n),
          };
          w = { ...w, intScale };
        }
        weights = w;
      } else if (l.format === 'int8') {
        weights = {
          format: 'int8',
          n,
          k,
          data: readExact(r, dir, `${name}.qweight`, 'i8', n * k),
          scales: readExact(r, dir, `${name}.scales`, 'f32', n),
        };
      } else if (l.format === 'f32') {
        weights = { format: 'f32', n, k, data: readExact(r, dir, `${name}.weight`, 'f32', n * k) };
      } else {
        throw fmt(dir, `unknown weight format ${describeValue(l.format)} for ${name}`);
      }
      const plan = l.plan;
      if (!plan || plan.name !== name || !['static', 'dynamic', 'none'].includes(plan.act)) {
        throw fmt(dir, `bad plan for ${name}: ${describeValue(plan)}`);
      }
      let staticScale: number | undefined;
      if (plan.act === 'static') {
        staticScale = readExact(r, dir, `${name}.act_scale`, 'f32', 1)[0] as number;
        if (!(staticScale > 0) || !Number.isFinite(staticScale)) {
          throw new QError(
            'E_NUMERIC',
            `Expected a positive finite static scale for ${name} but received ${staticScale}`,
          );
        }
      }
      const bias = l.bias ? readExact(r, dir, `${name}.bias`, 'f32', n) : undefined;
      linears.set(name, {
        name,
        weights,
        act: plan.act,
        ...(staticScale !== undefined ? { staticScale } : {}),
        ...(bias ? { bias } : {}),
      });
      plans.push(plan);
    }
    const tensors = new Map<string, Tensor<'f32'>>();
    for (const [name, file] of Object.entries(manifest.tensors)) {
      const r = reader(file);
      if (!r.has(name)) throw fmt(dir, `tensor ${name} is missing from ${file}`);
      const t = r.read(name);
      // Streaming writers may keep a source's f16/bf16 tensors as they are; they are widened exactly here.
      if (t.dtype === 'f16' || t.dtype === 'bf16') tensors.set(name, t.to('f32'));
      else if (t.dtype === 'f32') tensors.set(name, t as Tensor<'f32'>);
      else throw fmt(dir, `expected f32, f16 or bf16 for ${name} but received ${t.dtype}`);
    }
    return {
      model: { config: manifest.config, recipe: manifest.recipe, plans, linears, tensors },
      manifest,
      verified,
    };
  } finally {
    for (const r of readers.values()) r.close();
  }
}
