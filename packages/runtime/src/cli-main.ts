import * as fs from 'node:fs';
import * as path from 'node:path';
import * as comm from '@q/comm';
import { isQError, QError, writeFileAtomic } from '@q/core';
import * as kernels from '@q/kernels-cuda';
import { formatPlanTable, RECIPE_NAMES, RECIPES, verifyQuantized } from '@q/quant';
import { SingleBar } from 'cli-progress';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import pkg from '../package.json';
import { type CreateModelOptions, createModel } from './backend';
import { benchE2e, type E2eShape, formatE2eTable, writeE2eJson } from './bench-e2e';
import { int, num } from './cli-options';
import { formatDemoTable, runDemo } from './demo';
import { resolveDevice } from './device';
import { evaluatePerplexity } from './evaluate';
import { generate } from './generate';
import type { CausalLM } from './lm';
import { type LoadedModel, loadModel } from './load';
import { isQuantizedDir, resolveRecipe } from './quantize';
import { quantizeFile } from './quantize-file';
import { addBenchServeCommand, addServeCommand } from './server/cli';
import {
  ALLREDUCE_OPTIONS,
  createTensorParallelModel,
  parseAllReduce,
  refuseGpuTensorParallel,
} from './tp/index';

/** Where the CLI writes; injectable so tests run it in-process. */
export interface CliIO {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Progress bars are drawn only on a terminal. */
  readonly isTTY: boolean;
}

const processIO: CliIO = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  isTTY: Boolean(process.stderr.isTTY),
};

type Progress = { update(label: string, done: number, total: number, unit?: string): void; stop(): void };

function progress(io: CliIO, enabled: boolean): Progress {
  if (!enabled || !io.isTTY) return { update() {}, stop() {} };
  let bar: SingleBar | null = null;
  let current = '';
  return {
    update(label, done, total, unit = 'tokens') {
      if (label !== current) {
        bar?.stop();
        bar = new SingleBar({
          format: `${label.padEnd(12)} [{bar}] {percentage}% | {value}/{total} ${unit} | {duration}s`,
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: false,
        });
        bar.start(total, 0);
        current = label;
      }
      bar?.update(done);
    },
    stop() {
      bar?.stop();
      bar = null;
      current = '';
    },
  };
}

/** `--device` as createModel options, saying in one line on stderr where the model runs. */
function modelOptions(flag: string | undefined, io: CliIO): CreateModelOptions {
  const { device, line } = resolveDevice(flag);
  io.stderr(`${line}\n`);
  return device.backend === 'cpu' ? { backend: 'cpu' } : { backend: 'cuda', device: device.index };
}

function readText(file: string, option: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QError(
      'E_IO',
      `Expected a readable text file for ${option} but received ${JSON.stringify(file)}: ${(e as Error).message}`,
    );
  }
}

/** What `--tp` and `--allreduce` give a command that runs a model. */
interface RunOptions {
  device?: string;
  tp: number;
  allreduce: string;
}

/** `--tp` and `--allreduce` on a command that runs a model. */
function runOptions(cmd: Command): Command {
  return cmd
    .option(
      '--tp <n>',
      'tensor-parallel ranks on this node (cpu: ranks in this process; cuda: one GPU per rank)',
      int('--tp', 1),
      1,
    )
    .addOption(
      new Option(
        '--allreduce <mode>',
        'all-reduce after o_proj and down_proj with --tp > 1: auto, exact (cpu), nccl, fused (cuda), int8, int4',
      )
        .choices(ALLREDUCE_OPTIONS as string[])
        .default('auto'),
    );
}

/** With --tp > 1 and no --device, the ranks run on the CPU (tensor parallelism on GPUs is asked for by name). */
function tpDevice(o: RunOptions): string | undefined {
  return o.tp > 1 && o.device === undefined ? 'cpu' : o.device;
}

/** The model of a loaded checkpoint on one rank, or split over `--tp` ranks. */
function runnable(m: LoadedModel, on: CreateModelOptions, o: RunOptions): Promise<CausalLM> {
  const backend = on.backend ?? 'cpu';
  if (o.tp === 1) return createModel(m, on);
  return createTensorParallelModel(m, {
    tp: o.tp,
    allreduce: parseAllReduce(o.allreduce, backend),
    backend,
  });
}

function load(p: string, opts: { tokenizer?: string }): LoadedModel {
  return loadModel(p, opts.tokenizer !== undefined ? { tokenizer: opts.tokenizer } : {});
}

/** Weights of embeddings, norms and projections (biases not counted), from the config alone. */
function countParams(m: LoadedModel): number {
  const c = m.config;
  const d = c.hiddenSize;
  const qd = c.numHeads * c.headDim;
  const kvd = c.numKvHeads * c.headDim;
  const layer = 2 * d + qd * d + 2 * kvd * d + d * qd + 3 * c.intermediateSize * d;
  return c.vocabSize * d * (c.tieWordEmbeddings ? 1 : 2) + c.numLayers * layer + d;
}

function defaultOut(model: string, recipe: string): string {
  const abs = path.resolve(model);
  const base = path.basename(abs).replace(/\.bin$/, '');
  return path.join(path.dirname(abs), `${base}-${recipe}`);
}

const fmtPct = (v: number) => `${(v * 100).toFixed(2)}%`;

/**
 * Builds the `q` command line program.
 *
 * @example
 * ```ts
 * await createProgram().parseAsync(['node', 'q', 'demo']);
 * ```
 */
export function createProgram(io: CliIO = processIO, options: { signal?: AbortSignal } = {}): Command {
  const signal = options.signal ? { signal: options.signal } : {};
  const out = (s = '') => io.stdout(`${s}\n`);
  const json = (v: unknown) => io.stdout(`${JSON.stringify(v, null, 2)}\n`);
  const program = new Command('q')
    .description('W4A8 LLM quantization and inference for Node.js: quantize, evaluate, generate, demo')
    .version(pkg.version, '-V, --version', 'print the version of @q/runtime')
    .showHelpAfterError()
    .configureOutput({ writeOut: (s) => io.stdout(s), writeErr: (s) => io.stderr(s) })
    .exitOverride();
  program.addHelpText(
    'after',
    `
Examples:
  q demo
  q quantize stories260K.bin --recipe fptq --calib calib.txt --out stories260K-fptq
  q eval stories260K-fptq --text valid.txt --compare stories260K.bin
  q generate stories260K-fptq --prompt "Once upon a time" --max-tokens 64`,
  );

  program
    .command('inspect')
    .description(
      'show a model: source, architecture, shapes, tokenizer, and for a quantized model its recipe and plan',
    )
    .argument('<model>', 'llama2.c checkpoint, Hugging Face directory, or q quantized directory')
    .option(
      '--tokenizer <file>',
      'llama2.c tokenizer (default: tokenizer.bin or tok*.bin beside the checkpoint)',
    )
    .option('--json', 'print one JSON object')
    .option('--verify', 'check every file of a quantized directory against the sha256 in its manifest')
    .addHelpText(
      'after',
      '\nExamples:\n  q inspect stories260K.bin\n  q inspect models/Qwen2.5-0.5B --json\n  q inspect stories260K-fptq --verify',
    )
    .action((modelPath: string, o: { tokenizer?: string; json?: boolean; verify?: boolean }) => {
      // Before loading, so a changed file is named rather than failing somewhere inside the load.
      const verified = o.verify && isQuantizedDir(modelPath) ? verifyQuantized(modelPath) : undefined;
      const m = load(modelPath, o);
      const plans = m.plans;
      const info = {
        path: m.path,
        source: m.source,
        ...(m.recipe ? { recipe: m.recipe } : {}),
        config: m.config,
        parameters: countParams(m),
        tokenizer: {
          kind: m.tokenizer.kind,
          vocabSize: m.tokenizer.vocabSize,
          chatTemplate: Boolean(m.tokenizer.applyChatTemplate),
        },
        ...(plans ? { plan: plans } : {}),
        ...(verified ? { verified } : {}),
      };
      if (o.json) return json(info);
      const c = m.config;
      out(`${m.path} (${m.source}${m.recipe ? `, recipe ${m.recipe}` : ''})`);
      out(
        `  architecture ${c.architecture}, ${c.numLayers} layers, hidden ${c.hiddenSize}, intermediate ${c.intermediateSize}`,
      );
      out(
        `  heads ${c.numHeads} (kv ${c.numKvHeads}, head dim ${c.headDim}), vocab ${c.vocabSize}, context ${c.maxSeqLen}`,
      );
      out(
        `  rope ${c.ropeStyle}, theta ${c.ropeTheta}, scaling ${c.ropeScaling.type}; tied embeddings ${c.tieWordEmbeddings}; attention bias ${c.attentionBias}`,
      );
      out(`  parameters ${countParams(m).toLocaleString('en-US')}`);
      out(
        `  tokenizer ${m.tokenizer.kind}, ${m.tokenizer.vocabSize} tokens${m.tokenizer.applyChatTemplate ? ', chat template' : ''}`,
      );
      if (verified)
        out(
          verified.hashed
            ? `  sha256 verified for ${verified.files.length} files`
            : '  not verified: the manifest predates file hashes (written by an older q quantize)',
        );
      else if (o.verify) out('  nothing to verify: not a quantized directory');
      if (plans) {
        out();
        out(formatPlanTable(plans));
      }
    });

  program
    .command('quantize')
    .description('calibrate and quantize a float model into a directory that carries its tokenizer')
    .argument('<model>', 'llama2.c checkpoint or Hugging Face directory')
    .addOption(
      new Option(
        '--recipe <name|file>',
        `quantization recipe: ${RECIPE_NAMES.join(', ')}, or a recipe JSON file`,
      )
        .argParser((v: string) => {
          if (
            (RECIPE_NAMES as readonly string[]).includes(v) ||
            v.toLowerCase().endsWith('.json') ||
            fs.existsSync(v)
          )
            return v;
          throw new InvalidArgumentError(
            `Expected one of ${RECIPE_NAMES.join(', ')} or a recipe JSON file for --recipe but received ${JSON.stringify(v)}`,
          );
        })
        .makeOptionMandatory(),
    )
    .option('--group-size <n>', 'int4 group size along K (overrides the recipe)', int('--group-size', 2))
    .option('--calib <file>', 'calibration text (needed by fptq and w4a8-static)')
    .option('--calib-tokens <n>', 'calibrate on at most N tokens (default 16384)', int('--calib-tokens'))
    .option('--out <dir>', 'output directory (default <model>-<recipe> beside the model)')
    .option('--force', 'replace a non-empty output directory')
    .option('--tokenizer <file>', 'llama2.c tokenizer (default: beside the checkpoint)')
    .option('--json', 'print one JSON object, no progress bars')
    .addHelpText(
      'after',
      `\nRecipes:\n${RECIPE_NAMES.map((r) => `  ${r.padEnd(12)} ${RECIPES[r].description}`).join('\n')}\n  <file>.json  a whole recipe as a manifest records it (name defaults to the file name)\n\nExamples:\n  q quantize stories260K.bin --recipe fptq --calib calib.txt\n  q quantize stories260K.bin --recipe ./my-recipe.json --calib calib.txt\n  q quantize models/Llama-3.2-1B --recipe w4a8-rtn --group-size 64 --out llama-w4a8 --force`,
    )
    .action(
      async (
        modelPath: string,
        o: {
          recipe: string;
          groupSize?: number;
          calib?: string;
          calibTokens?: number;
          out?: string;
          force?: boolean;
          tokenizer?: string;
          json?: boolean;
        },
      ) => {
        const t0 = performance.now();
        const recipe = resolveRecipe({
          recipe: o.recipe,
          ...(o.groupSize !== undefined ? { groupSize: o.groupSize } : {}),
        });
        const outDir = o.out ?? defaultOut(modelPath, recipe.name);
        const bar = progress(io, !o.json);
        let run: Awaited<ReturnType<typeof quantizeFile>>;
        try {
          // The CLI's signal (Ctrl-C) aborts; quantizeFile then leaves nothing under --out.
          run = await quantizeFile(modelPath, outDir, {
            recipe,
            ...(o.calib !== undefined ? { calibText: readText(o.calib, '--calib') } : {}),
            ...(o.calibTokens !== undefined ? { calibTokens: o.calibTokens } : {}),
            ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}),
            force: Boolean(o.force),
            ...signal,
            onProgress: (p) =>
              bar.update(p.stage, p.done, p.total, p.stage === 'quantize' ? 'layers' : 'tokens'),
          });
        } finally {
          bar.stop();
        }
        const seconds = (performance.now() - t0) / 1000;
        if (o.json)
          return json({
            out: run.out,
            recipe: run.recipe,
            calibTokens: run.calibTokens,
            seconds,
            plan: run.plans,
            report: run.report,
          });
        out(`quantized ${path.resolve(modelPath)} with ${run.recipe.name} (${run.recipe.description})`);
        if (run.calibTokens) out(`calibrated on ${run.calibTokens} tokens`);
        out();
        out(formatPlanTable(run.plans, run.report));
        out();
        out(`wrote ${run.out} (${seconds.toFixed(1)} s)`);
      },
    );

  runOptions(program.command('eval'))
    .description(
      'perplexity over a text file; with --compare, top-1 agreement and KL against a reference model',
    )
    .argument('<model>', 'model or quantized directory')
    .requiredOption('--text <file>', 'text to evaluate (one stream, windows of ctx - 1 tokens after BOS)')
    .option(
      '--ctx <n>',
      'context per window, BOS included (default min(256, model context))',
      int('--ctx', 2),
    )
    .option('--compare <model>', 'reference model (e.g. the float model) for top-1 agreement and KL')
    .option('--tokenizer <file>', 'llama2.c tokenizer (default: beside the checkpoint)')
    .option('--json', 'print one JSON object {ppl, tokens, ...}, no progress bars')
    .option('--device <d>', 'cpu, cuda or cuda:N (default: cuda where a usable GPU exists, else cpu)')
    .addHelpText(
      'after',
      '\nExamples:\n  q eval stories260K.bin --text valid.txt\n  q eval stories260K-fptq --text valid.txt --compare stories260K.bin --json\n  q eval stories260K.bin --text valid.txt --tp 2 --allreduce int8 --compare stories260K.bin',
    )
    .action(
      async (
        modelPath: string,
        o: {
          text: string;
          ctx?: number;
          compare?: string;
          tokenizer?: string;
          json?: boolean;
          device?: string;
        } & RunOptions,
      ) => {
        const m = load(modelPath, o);
        const ref = o.compare !== undefined ? load(o.compare, o) : undefined;
        const on = modelOptions(tpDevice(o), io);
        const model = await runnable(m, on, o);
        const refModel = ref ? await createModel(ref, on) : undefined;
        const ids = m.tokenizer.encode(readText(o.text, '--text'));
        const ctx = o.ctx ?? Math.min(256, m.config.maxSeqLen);
        const bar = progress(io, !o.json);
        const t0 = performance.now();
        const r = await evaluatePerplexity(model, ids, {
          ctx,
          ...(refModel ? { compare: refModel } : {}),
          ...signal,
          onProgress: (d, t) => bar.update('eval', d, t),
        }).finally(() => Promise.all([model.dispose(), refModel?.dispose()]));
        bar.stop();
        const seconds = (performance.now() - t0) / 1000;
        if (o.json)
          return json({
            model: m.path,
            ...(m.recipe ? { recipe: m.recipe } : {}),
            ...(ref ? { compare: ref.path } : {}),
            ...r,
            seconds,
          });
        out(
          `${m.path}${m.recipe ? ` (${m.recipe})` : ''}: ppl ${r.ppl.toFixed(4)} over ${r.tokens} tokens, ${r.windows} windows of ctx ${r.ctx}`,
        );
        if (ref && r.top1 !== undefined && r.kl !== undefined)
          out(
            `vs ${ref.path}: top-1 agreement ${fmtPct(r.top1)}, KL ${r.kl.toFixed(5)}, reference ppl ${r.referencePpl?.toFixed(4)}`,
          );
      },
    );

  runOptions(program.command('generate'))
    .description('continue a prompt, streaming tokens to stdout (greedy by default)')
    .argument('<model>', 'model or quantized directory')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-tokens <n>', 'new tokens at most', int('--max-tokens', 0), 128)
    .option(
      '--temperature <t>',
      'sampling temperature; 0 is greedy',
      num('--temperature', (n) => n >= 0, 'a number >= 0'),
      0,
    )
    .option('--top-k <k>', 'sample among the k most likely tokens (0 = all)', int('--top-k', 0), 0)
    .option(
      '--top-p <p>',
      'nucleus sampling threshold in (0, 1]',
      num('--top-p', (n) => n > 0 && n <= 1, 'a number in (0, 1]'),
      1,
    )
    .option('--seed <s>', 'seed of the sampler', int('--seed', 0), 0)
    .option('--chat', 'wrap the prompt in the model chat template (Hugging Face tokenizers with one)')
    .option('--tokenizer <file>', 'llama2.c tokenizer (default: beside the checkpoint)')
    .option('--device <d>', 'cpu, cuda or cuda:N (default: cuda where a usable GPU exists, else cpu)')
    .addHelpText(
      'after',
      '\nExamples:\n  q generate stories260K.bin --prompt "Once upon a time"\n  q generate stories260K.bin --prompt "Once upon a time" --tp 4 --allreduce exact\n  q generate stories260K-fptq --prompt "Lily" --temperature 0.8 --top-p 0.9 --seed 7',
    )
    .action(
      async (
        modelPath: string,
        o: {
          prompt: string;
          maxTokens: number;
          temperature: number;
          topK: number;
          topP: number;
          seed: number;
          chat?: boolean;
          tokenizer?: string;
          device?: string;
        } & RunOptions,
      ) => {
        const m = load(modelPath, o);
        const on = modelOptions(tpDevice(o), io);
        let text = o.prompt;
        if (o.chat) {
          if (!m.tokenizer.applyChatTemplate)
            throw new QError(
              'E_TOKENIZER',
              `Expected a chat template in the tokenizer of ${m.path} for --chat but received none`,
            );
          text = m.tokenizer.applyChatTemplate([{ role: 'user', content: o.prompt }]);
        }
        const promptIds = m.tokenizer.encodePrompt(text, { chat: Boolean(o.chat) });
        if (promptIds.length > m.config.maxSeqLen)
          throw new QError(
            'E_ARG',
            `Expected a prompt of at most ${m.config.maxSeqLen} tokens (the model's context) but received ${promptIds.length} tokens`,
          );
        const dec = m.tokenizer.streamDecoder();
        for (const id of promptIds) dec.push(id);
        const model = await runnable(m, on, o);
        io.stdout(o.prompt);
        try {
          for await (const id of generate(model, promptIds, {
            maxTokens: o.maxTokens,
            temperature: o.temperature,
            topK: o.topK,
            topP: o.topP,
            seed: o.seed,
            ...signal,
          }))
            io.stdout(dec.push(id));
        } finally {
          // What was generated before an interruption is still printed whole.
          io.stdout(`${dec.flush()}\n`);
          await model.dispose();
        }
      },
    );

  program
    .command('demo')
    .description('quantize a model with FPTQ and the baselines, compare them with the float model, generate')
    .option('--model <path>', 'a real model instead of the embedded synthetic one')
    .option('--text <file>', 'text: first 40% of lines calibrate, the rest evaluate')
    .option('--calib-tokens <n>', 'calibration tokens (default 256)', int('--calib-tokens'))
    .option(
      '--eval-tokens <n>',
      'held-out tokens each recipe is compared on (default 128)',
      int('--eval-tokens'),
    )
    .option('--tokenizer <file>', 'llama2.c tokenizer (default: beside the checkpoint)')
    .option('--json', 'print one JSON object, no progress bars')
    .addHelpText(
      'after',
      '\nExamples:\n  q demo\n  q demo --model stories260K.bin --text tinystories.txt --json',
    )
    .action(
      async (o: {
        model?: string;
        text?: string;
        calibTokens?: number;
        evalTokens?: number;
        tokenizer?: string;
        json?: boolean;
      }) => {
        const bar = progress(io, !o.json);
        const log = (s: string) => {
          if (!o.json) {
            bar.stop();
            io.stderr(`${s}\n`);
          }
        };
        let generated = '';
        const r = await runDemo({
          ...(o.model !== undefined ? { model: o.model } : {}),
          ...(o.text !== undefined ? { text: o.text } : {}),
          ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}),
          ...(o.calibTokens !== undefined ? { calibTokens: o.calibTokens } : {}),
          ...(o.evalTokens !== undefined ? { evalTokens: o.evalTokens } : {}),
          ...signal,
          onStep: (s) => log(`${s} ...`),
          onProgress: (label, d, t) => bar.update(label, d, t),
          onText: (t) => {
            generated += t;
          },
        });
        bar.stop();
        if (o.json) return json(r);
        const mm = r.model;
        out();
        out(
          `model: ${mm.name}: ${mm.numLayers} layers, hidden ${mm.hiddenSize}, intermediate ${mm.intermediateSize}, vocab ${mm.vocabSize}`,
        );
        out(
          `calibration ${r.calibTokens} tokens; comparison with the float model on ${r.evalTokens} held-out tokens`,
        );
        out();
        out(formatDemoTable(r));
        out();
        out('FPTQ per-layer plan (range = max |x| of the layer input over calibration):');
        out(r.planTable);
        out();
        out(`generation (${r.generation.recipe}, greedy): ${r.generation.prompt}${generated}`);
        if (o.model === undefined)
          out('(the synthetic model has random weights: its text is not meant to read well)');
        out(r.gpu.message);
        out(`done in ${r.seconds.toFixed(1)} s`);
      },
    );

  addServeCommand(program, io, options.signal);

  const bench = program
    .command('bench')
    .description('benchmarks: GEMM and all-reduce on the GPU (need the CUDA addon), serving load');
  addBenchServeCommand(bench, io);
  const jsonPath = (v: string | true | undefined, name: string): string | undefined =>
    v === undefined ? undefined : v === true ? path.join('bench-results', `${name}.json`) : v;
  bench
    .command('gemm')
    .description('W4A8 GEMM in each scale mode against cuBLAS bf16 on Llama-2 7B and 70B layer shapes')
    .option('--json [file]', 'also write the results as JSON (default file: bench-results/gemm.json)')
    .option('--device <n>', 'CUDA device', int('--device', 0), 0)
    .option(
      '--stream',
      'time plain back-to-back launches (per-call cost, host glue included) instead of CUDA-graph replay',
    )
    .option('--m <list>', 'token counts M, comma-separated (default 1,16,...,8192)')
    .option('--shapes <list>', 'only these shapes, e.g. llama2-7b:o,llama2-7b:qkv (default: all)')
    .option(
      '--tune',
      'measure every kernel variant per shape, scale mode and M bucket and write the dispatch table (--json: the file, default bench-results/gemm-dispatch.json; the package ships it as src/dispatch/<gpu>.json)',
    )
    .option('--dispatch <file>', 'use this dispatch table (from --tune) instead of the shipped one')
    .addHelpText(
      'after',
      '\nExamples:\n  q bench gemm\n  q bench gemm --json\n  q bench gemm --stream --m 1 --shapes llama2-7b:o\n  q bench gemm --json gemm.json\n  q bench gemm --tune --json h200.json\n  q bench gemm --dispatch h200.json --json gemm.json',
    )
    .action(
      (o: {
        json?: string | true;
        device: number;
        stream?: boolean;
        m?: string;
        shapes?: string;
        tune?: boolean;
        dispatch?: string;
      }) => {
        const json = jsonPath(o.json, o.tune ? 'gemm-dispatch' : 'gemm');
        if (json) fs.mkdirSync(path.dirname(path.resolve(json)), { recursive: true });
        const ms = o.m?.split(',').map((v) => int('--m', 1)(v.trim()));
        let shapes: kernels.GemmShape[] | undefined;
        if (o.shapes !== undefined) {
          const want = o.shapes.split(',').map((v) => v.trim());
          shapes = kernels.BENCH_SHAPES.filter((s) => want.includes(`${s.model}:${s.layer}`));
          if (shapes.length !== want.length)
            throw new QError(
              'E_ARG',
              `Expected shapes among ${kernels.BENCH_SHAPES.map((s) => `${s.model}:${s.layer}`).join(', ')} for --shapes but received ${o.shapes}`,
            );
        }
        if (o.tune) {
          if (o.stream || o.dispatch !== undefined)
            throw new QError(
              'E_ARG',
              'Expected neither --stream nor --dispatch with --tune but received them',
            );
          const r = kernels.tuneGemm({
            device: o.device,
            ...(json ? { json } : {}),
            ...(ms ? { ms } : {}),
            ...(shapes ? { shapes } : {}),
          });
          if (json) io.stderr(`dispatch table written to ${json} (${r.table.entries.length} entries)\n`);
          return;
        }
        if (o.dispatch !== undefined) {
          const file = o.dispatch;
          let text: string;
          try {
            text = fs.readFileSync(file, 'utf8');
          } catch (e) {
            throw new QError(
              'E_IO',
              `Expected a readable dispatch table for --dispatch but received ${file} (${e instanceof Error ? e.message : String(e)})`,
            );
          }
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            throw new QError('E_ARG', `Expected JSON for --dispatch but received ${file}`);
          }
          kernels.setGemmDispatchTable(kernels.parseGemmDispatchTable(parsed, file));
        }
        kernels.benchGemm({
          device: o.device,
          ...(json ? { json } : {}),
          ...(o.stream ? { timing: 'stream' as const } : {}),
          ...(ms ? { ms } : {}),
          ...(shapes ? { shapes } : {}),
        });
        if (json) io.stderr(`results written to ${json}\n`);
      },
    );
  bench
    .command('allreduce')
    .description('quantized all-reduce against NCCL across the GPUs of this node')
    .option('--worlds <list>', 'GPU counts, comma-separated (default 2,4, limited to the GPUs present)')
    .option('--hidden <n>', 'hidden size of the messages (default 8192)', int('--hidden'))
    .option('--json [file]', 'also write the results as JSON (default file: bench-results/allreduce.json)')
    .addHelpText(
      'after',
      '\nExamples:\n  q bench allreduce\n  q bench allreduce --worlds 2 --json\n  q bench allreduce --json allreduce.json',
    )
    .action(async (o: { worlds?: string; hidden?: number; json?: string | true }) => {
      const worlds = o.worlds?.split(',').map((w) => int('--worlds', 1)(w.trim()));
      const results = await comm.benchAllreduce({
        ...(worlds ? { worlds } : {}),
        ...(o.hidden !== undefined ? { hidden: o.hidden } : {}),
      });
      const json = jsonPath(o.json, 'allreduce');
      if (json) {
        fs.mkdirSync(path.dirname(path.resolve(json)), { recursive: true });
        const text = new TextEncoder().encode(`${JSON.stringify(results, null, 2)}\n`);
        writeFileAtomic(json, (write) => write(text));
        io.stderr(`results written to ${json}\n`);
      }
    });
  runOptions(bench.command('e2e'))
    .description(
      'the whole model: q W4A8 and q bf16 side by side (TTFT, decode tok/s, request tok/s, memory)',
    )
    .option('--model <path>', 'a model directory or file (default: random weights drawn on the device)')
    .addOption(
      new Option('--shape <name>', 'model shape of the random weights')
        .choices(['llama2-7b', 'llama3-8b', 'llama2-70b'])
        .default('llama2-7b'),
    )
    .option('--json [file]', 'also write the results as JSON (default file: bench-results/e2e.json)')
    .option('--breakdown', 'time each kernel of one decode step and one 2048-token prefill')
    .option('--device <n>', 'CUDA device', int('--device', 0), 0)
    .addHelpText(
      'after',
      '\nExamples:\n  q bench e2e\n  q bench e2e --shape llama3-8b --json\n  q bench e2e --shape llama2-70b --breakdown',
    )
    .action(
      async (o: {
        model?: string;
        shape: E2eShape;
        json?: string | true;
        breakdown?: boolean;
        device: number;
        tp: number;
        allreduce: string;
      }) => {
        if (o.tp > 1) {
          parseAllReduce(o.allreduce, 'cuda');
          await refuseGpuTensorParallel(o.tp);
        }
        const r = await benchE2e({
          shape: o.shape,
          device: o.device,
          ...(o.model !== undefined ? { model: o.model } : {}),
          ...(o.breakdown ? { breakdown: true } : {}),
          log: (line) => io.stderr(`${line}\n`),
        });
        out(formatE2eTable(r));
        const json = jsonPath(o.json, 'e2e');
        if (json) {
          fs.mkdirSync(path.dirname(path.resolve(json)), { recursive: true });
          writeE2eJson(json, r);
          io.stderr(`results written to ${json}\n`);
        }
      },
    );
  program
    .command('launch')
    .description('start one process per GPU with the rendezvous environment set')
    .allowUnknownOption()
    .allowExcessArguments()
    .argument(
      '[args...]',
      '--nproc N [--addr|--master-addr A] [--port|--master-port P] [--timeout-ms T] [--nnodes K --node-rank I] -- <command...>',
    )
    .addHelpText(
      'after',
      '\nExamples:\n  q launch --nproc 2 -- node serve.mjs\n  Q_JOB_TOKEN=<shared> q launch --nproc 4 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 -- node serve.mjs',
    );
  return program;
}

/**
 * Runs the `q` command line and returns the exit status (0 ok, 1 error, 2 usage error, 130 when `signal`
 * stopped it). The caller owns the process: the `q` binary turns SIGINT and SIGTERM into `signal`.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * process.once('SIGINT', () => ac.abort());
 * process.exitCode = await runCli(process.argv.slice(2), undefined, ac.signal);
 * ```
 */
export async function runCli(
  argv: readonly string[],
  io: CliIO = processIO,
  signal?: AbortSignal,
): Promise<number> {
  try {
    // `q launch` hands everything after it to @q/comm untouched (the child command has options of its own).
    if (argv[0] === 'launch' && !argv.includes('--help')) return await comm.launchCli(argv.slice(1));
    await createProgram(io, signal ? { signal } : {}).parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
    if (signal?.aborted) {
      io.stderr('q: interrupted\n');
      return 130;
    }
    if (e instanceof CommanderError) {
      if (
        e.code === 'commander.helpDisplayed' ||
        e.code === 'commander.version' ||
        e.code === 'commander.help'
      )
        return 0;
      return e.exitCode === 0 ? 0 : 2;
    }
    if (isQError(e)) {
      io.stderr(`q: ${(e as QError).message} [${(e as QError).code}]\n`);
      return 1;
    }
    io.stderr(`q: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}
