import * as fs from 'node:fs';
import * as path from 'node:path';
import * as comm from '@q/comm';
import { isQError, QError, writeFileAtomic } from '@q/core';
import * as kernels from '@q/kernels-cuda';
import { formatPlanTable, RECIPE_NAMES, RECIPES, verifyQuantized } from '@q/quant';
import { SingleBar } from 'cli-progress';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import pkg from '../package.json';
import { formatDemoTable, runDemo } from './demo';
import { evaluatePerplexity } from './evaluate';
import { generate } from './generate';
import { type LoadedModel, loadModel } from './load';
import { isQuantizedDir } from './quantize';
import { quantizeFile } from './quantize-file';

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

const int =
  (name: string, min = 1) =>
  (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(
        `Expected an integer >= ${min} for ${name} but received ${JSON.stringify(v)}`,
      );
    return n;
  };
const num =
  (name: string, ok: (n: number) => boolean, what: string) =>
  (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || !ok(n))
      throw new InvalidArgumentError(`Expected ${what} for ${name} but received ${JSON.stringify(v)}`);
    return n;
  };

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

function load(p: string, opts: { tokenizer?: string }): LoadedModel {
  return loadModel(p, opts.tokenizer !== undefined ? { tokenizer: opts.tokenizer } : {});
}

function countParams(m: LoadedModel): number {
  let n = m.model.weights.embed.length + m.model.weights.finalNorm.length;
  for (const l of m.model.linears().values()) n += l.inFeatures * l.outFeatures;
  for (const l of m.model.weights.layers) n += l.inputNorm.length + l.postNorm.length;
  if (m.config.tieWordEmbeddings && m.model.weights.lmHead.format === 'f32')
    n -= m.config.vocabSize * m.config.hiddenSize;
  return n;
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
export function createProgram(io: CliIO = processIO): Command {
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
      const plans = 'plans' in m ? (m as { plans: Parameters<typeof formatPlanTable>[0] }).plans : undefined;
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
      new Option('--recipe <name>', 'quantization recipe').choices([...RECIPE_NAMES]).makeOptionMandatory(),
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
      `\nRecipes:\n${RECIPE_NAMES.map((r) => `  ${r.padEnd(12)} ${RECIPES[r].description}`).join('\n')}\n\nExamples:\n  q quantize stories260K.bin --recipe fptq --calib calib.txt\n  q quantize models/Llama-3.2-1B --recipe w4a8-rtn --group-size 64 --out llama-w4a8 --force`,
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
        const outDir = o.out ?? defaultOut(modelPath, o.recipe);
        const bar = progress(io, !o.json);
        // The CLI owns the signals: Ctrl-C aborts, and quantizeFile leaves nothing under --out.
        const ac = new AbortController();
        const stop = (): void =>
          ac.abort(new QError('E_IO', 'Expected to finish quantizing but received an interrupt'));
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        let run: Awaited<ReturnType<typeof quantizeFile>>;
        try {
          run = await quantizeFile(modelPath, outDir, {
            recipe: o.recipe,
            ...(o.groupSize !== undefined ? { groupSize: o.groupSize } : {}),
            ...(o.calib !== undefined ? { calibText: readText(o.calib, '--calib') } : {}),
            ...(o.calibTokens !== undefined ? { calibTokens: o.calibTokens } : {}),
            ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}),
            force: Boolean(o.force),
            signal: ac.signal,
            onProgress: (p) =>
              bar.update(p.stage, p.done, p.total, p.stage === 'quantize' ? 'layers' : 'tokens'),
          });
        } finally {
          bar.stop();
          process.removeListener('SIGINT', stop);
          process.removeListener('SIGTERM', stop);
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

  program
    .command('eval')
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
    .addHelpText(
      'after',
      '\nExamples:\n  q eval stories260K.bin --text valid.txt\n  q eval stories260K-fptq --text valid.txt --compare stories260K.bin --json',
    )
    .action(
      (
        modelPath: string,
        o: { text: string; ctx?: number; compare?: string; tokenizer?: string; json?: boolean },
      ) => {
        const m = load(modelPath, o);
        const ref = o.compare !== undefined ? load(o.compare, o) : undefined;
        const ids = m.tokenizer.encode(readText(o.text, '--text'));
        const ctx = o.ctx ?? Math.min(256, m.config.maxSeqLen);
        const bar = progress(io, !o.json);
        const t0 = performance.now();
        const r = evaluatePerplexity(m.model, ids, {
          ctx,
          ...(ref ? { compare: ref.model } : {}),
          onProgress: (d, t) => bar.update('eval', d, t),
        });
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

  program
    .command('generate')
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
    .addHelpText(
      'after',
      '\nExamples:\n  q generate stories260K.bin --prompt "Once upon a time"\n  q generate stories260K-fptq --prompt "Lily" --temperature 0.8 --top-p 0.9 --seed 7',
    )
    .action(
      (
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
        },
      ) => {
        const m = load(modelPath, o);
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
        io.stdout(o.prompt);
        generate(m.model, promptIds, {
          maxTokens: o.maxTokens,
          temperature: o.temperature,
          topK: o.topK,
          topP: o.topP,
          seed: o.seed,
          onToken: (id) => io.stdout(dec.push(id)),
        });
        io.stdout(`${dec.flush()}\n`);
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
      (o: {
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
        const r = runDemo({
          ...(o.model !== undefined ? { model: o.model } : {}),
          ...(o.text !== undefined ? { text: o.text } : {}),
          ...(o.tokenizer !== undefined ? { tokenizer: o.tokenizer } : {}),
          ...(o.calibTokens !== undefined ? { calibTokens: o.calibTokens } : {}),
          ...(o.evalTokens !== undefined ? { evalTokens: o.evalTokens } : {}),
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

  const bench = program.command('bench').description('GPU benchmarks (need the CUDA addon and a GPU)');
  const jsonPath = (v: string | true | undefined, name: string): string | undefined =>
    v === undefined ? undefined : v === true ? path.join('bench-results', `${name}.json`) : v;
  bench
    .command('gemm')
    .description('W4A8 GEMM in each scale mode against cuBLAS bf16 on Llama-2 7B and 70B layer shapes')
    .option('--json [file]', 'also write the results as JSON (default file: bench-results/gemm.json)')
    .option('--device <n>', 'CUDA device', int('--device', 0), 0)
    .addHelpText(
      'after',
      '\nExamples:\n  q bench gemm\n  q bench gemm --json\n  q bench gemm --json gemm.json',
    )
    .action((o: { json?: string | true; device: number }) => {
      const json = jsonPath(o.json, 'gemm');
      if (json) fs.mkdirSync(path.dirname(path.resolve(json)), { recursive: true });
      kernels.benchGemm({ device: o.device, ...(json ? { json } : {}) });
      if (json) io.stderr(`results written to ${json}\n`);
    });
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
  program
    .command('launch')
    .description('start one process per GPU with the rendezvous environment set')
    .allowUnknownOption()
    .allowExcessArguments()
    .argument(
      '[args...]',
      '--nproc N [--addr A] [--port P] [--timeout-ms T] [--nnodes K --node-rank I] -- <command...>',
    )
    .addHelpText('after', '\nExamples:\n  q launch --nproc 2 -- node serve.mjs');
  return program;
}

/**
 * Runs the `q` command line and returns the exit status (0 ok, 1 error, 2 usage error).
 *
 * @example
 * ```ts
 * process.exitCode = await runCli(process.argv.slice(2));
 * ```
 */
export async function runCli(argv: readonly string[], io: CliIO = processIO): Promise<number> {
  try {
    // `q launch` hands everything after it to @q/comm untouched (the child command has options of its own).
    if (argv[0] === 'launch' && !argv.includes('--help')) return await comm.launchCli(argv.slice(1));
    await createProgram(io).parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
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
