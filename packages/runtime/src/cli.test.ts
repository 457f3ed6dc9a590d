import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { RECIPES } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { type CliIO, runCli } from './cli-main';
import { loadModel } from './load';
import { quantizeLoaded, saveQuantizedModel } from './quantize';
import { sharedDir } from './shared-data';

const shared = sharedDir();
const modelFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const textFile = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
const present = shared !== null && fs.existsSync(modelFile) && fs.existsSync(textFile);
if (!present)
  console.warn('skipping stories260K CLI tests: ../shared/models/stories260K or ../shared/data is absent');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function qWith(
  signal: AbortSignal | undefined,
  ...argv: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io: CliIO = { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s), isTTY: false };
  const code = await runCli(argv, io, signal);
  return { code, stdout, stderr };
}

const q = (...argv: string[]) => qWith(undefined, ...argv);

/** First 40% of lines for calibration, the rest for evaluation, as the README table does. */
function splitText(): { calib: string; evalFile: string } {
  const lines = fs
    .readFileSync(textFile, 'utf8')
    .split(/\r?\n/)
    .filter((l) => l.length > 0);
  const cut = Math.floor(lines.length * 0.4);
  const calib = path.join(tmp, 'calib.txt');
  const evalFile = path.join(tmp, 'eval.txt');
  fs.writeFileSync(calib, lines.slice(0, cut).join('\n'));
  // A few evaluation lines keep the test fast; the README table uses all of them.
  fs.writeFileSync(evalFile, lines.slice(cut, cut + 4).join('\n'));
  return { calib, evalFile };
}

describe('q --help', () => {
  for (const cmd of ['inspect', 'quantize', 'eval', 'generate', 'demo']) {
    it(`${cmd} --help shows usage and examples`, async () => {
      const r = await q(cmd, '--help');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`Usage: q ${cmd}`));
      expect(r.stdout).toMatch(/Examples:\n {2}q /);
    });
  }

  it('--version prints the package version', async () => {
    const r = await q('--version');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('an unknown recipe is a usage error listing the recipes', async () => {
    const r = await q('quantize', 'model.bin', '--recipe', 'nope');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/fptq.*w4a8-static/);
  });
});

describe.skipIf(!present)('q on stories260K', () => {
  it('quantize fptq then eval (JSON: ppl, tokens, top1, kl), the output directory carries the tokenizer', async () => {
    const { calib, evalFile } = splitText();
    const out = path.join(tmp, 'stories-fptq');
    const qr = await q(
      'quantize',
      modelFile,
      '--recipe',
      'fptq',
      '--calib',
      calib,
      '--calib-tokens',
      '4096',
      '--out',
      out,
      '--json',
    );
    expect(qr.code, qr.stderr).toBe(0);
    const qj = JSON.parse(qr.stdout) as {
      out: string;
      calibTokens: number;
      plan: { act: string; lae: boolean }[];
    };
    expect(qj.out).toBe(out);
    expect(qj.calibTokens).toBeGreaterThan(1000);
    expect(qj.calibTokens).toBeLessThanOrEqual(4096);
    // stories260K has no outliers: every layer input stays under v0, so FPTQ is per-tensor static everywhere.
    expect(qj.plan.every((p) => p.act === 'static' && !p.lae)).toBe(true);
    expect(fs.existsSync(path.join(out, 'tokenizer.bin'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'manifest.json'))).toBe(true);

    const fr = await q('eval', modelFile, '--text', evalFile, '--json');
    const er = await q('eval', out, '--text', evalFile, '--compare', modelFile, '--json');
    expect(er.code, er.stderr).toBe(0);
    const f = JSON.parse(fr.stdout) as { ppl: number; tokens: number };
    const e = JSON.parse(er.stdout) as {
      ppl: number;
      tokens: number;
      top1: number;
      kl: number;
      referencePpl: number;
    };
    expect(e.tokens).toBe(f.tokens);
    expect(e.referencePpl).toBeCloseTo(f.ppl, 6);
    // W4A8 on a 260K-parameter model (K = 64 and 172, one int4 group per row) costs some perplexity but
    // keeps most predictions; these bounds only catch a broken pipeline, the README has the measured values.
    expect(e.ppl / f.ppl).toBeGreaterThan(1);
    expect(e.ppl / f.ppl).toBeLessThan(1.5);
    expect(e.top1).toBeGreaterThan(0.7);
    expect(e.kl).toBeGreaterThan(0);
    expect(e.kl).toBeLessThan(0.5);

    const gr = await q('generate', out, '--prompt', 'Once upon a time', '--max-tokens', '16');
    expect(gr.code, gr.stderr).toBe(0);
    expect(gr.stdout.startsWith('Once upon a time')).toBe(true);
    expect(gr.stdout.length).toBeGreaterThan('Once upon a time'.length + 10);

    const ir = await q('inspect', out, '--json');
    expect(JSON.parse(ir.stdout)).toMatchObject({ source: 'quantized', recipe: 'fptq' });
  });

  it('refuses --out pointing at a non-empty directory without --force', async () => {
    const out = path.join(tmp, 'busy');
    fs.mkdirSync(out, { recursive: true });
    fs.writeFileSync(path.join(out, 'keep.txt'), 'precious');
    const r = await q('quantize', modelFile, '--recipe', 'w4a16', '--out', out);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/E_EXISTS/);
    expect(r.stderr).toMatch(/--force/);
    expect(fs.readFileSync(path.join(out, 'keep.txt'), 'utf8')).toBe('precious');
    const forced = await q('quantize', modelFile, '--recipe', 'w4a16', '--out', out, '--force', '--json');
    expect(forced.code, forced.stderr).toBe(0);
    expect(fs.existsSync(path.join(out, 'keep.txt'))).toBe(false);
    expect(fs.existsSync(path.join(out, 'manifest.json'))).toBe(true);
  });

  it('an interrupted quantize leaves no partial directory under the final name', async () => {
    const float = loadModel(modelFile);
    const run = await quantizeLoaded(float, { recipe: 'w4a8-rtn' });
    for (const at of ['weights', 'tokenizer', 'commit'] as const) {
      const out = path.join(tmp, `interrupted-${at}`);
      expect(() =>
        saveQuantizedModel(out, run, {
          tokenizer: float.tokenizer,
          onStep: (s) => {
            if (s === at) throw new Error(`interrupted at ${s}`);
          },
        }),
      ).toThrow(/interrupted/);
      expect(fs.existsSync(out)).toBe(false);
      expect(fs.readdirSync(tmp).filter((n) => n.includes(`interrupted-${at}`))).toEqual([]);
    }
  });

  it('quantize --recipe takes a recipe JSON file, recorded under its own name', async () => {
    const file = path.join(tmp, 'w4a8-g32.json');
    fs.writeFileSync(
      file,
      JSON.stringify({
        ...RECIPES['w4a8-rtn'],
        name: 'w4a8-g32',
        weights: { ...RECIPES['w4a8-rtn'].weights, groupSize: 32 },
      }),
    );
    const out = path.join(tmp, 'stories-custom');
    const r = await q('quantize', modelFile, '--recipe', file, '--out', out, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).recipe).toMatchObject({ name: 'w4a8-g32', weights: { groupSize: 32 } });
    const ir = await q('inspect', out, '--json');
    expect(JSON.parse(ir.stdout)).toMatchObject({ source: 'quantized', recipe: 'w4a8-g32' });
    const bad = path.join(tmp, 'bad.json');
    fs.writeFileSync(bad, JSON.stringify({ ...RECIPES['w4a8-rtn'], activations: { policy: 'sometimes' } }));
    const br = await q('quantize', modelFile, '--recipe', bad, '--out', path.join(tmp, 'never'));
    expect(br.code).toBe(1);
    expect(br.stderr).toMatch(/bad\.json.*activations/);
    expect(fs.existsSync(path.join(tmp, 'never'))).toBe(false);
  });

  it('an aborted signal stops quantize and generate with status 130 and leaves no output', async () => {
    const { calib } = splitText();
    const out = path.join(tmp, 'aborted');
    const qr = await qWith(
      AbortSignal.abort(),
      'quantize',
      modelFile,
      '--recipe',
      'fptq',
      '--calib',
      calib,
      '--out',
      out,
    );
    expect(qr.code).toBe(130);
    expect(qr.stderr).toMatch(/interrupted/);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(tmp).filter((n) => n.includes('.partial'))).toEqual([]);
    const ac = new AbortController();
    let stdout = '';
    const io: CliIO = {
      stdout: (t) => {
        stdout += t;
        // Abort once the first generated piece is printed.
        if (stdout.length > 'Once upon a time'.length) ac.abort();
      },
      stderr: () => {},
      isTTY: false,
    };
    const code = await runCli(
      ['generate', modelFile, '--prompt', 'Once upon a time', '--max-tokens', '100'],
      io,
      ac.signal,
    );
    expect(code).toBe(130);
    expect(stdout.startsWith('Once upon a time')).toBe(true);
  });

  it('generate refuses a prompt longer than the context', async () => {
    const r = await q('generate', modelFile, '--prompt', 'once upon a time '.repeat(200));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/at most 512 tokens/);
  });

  it('eval reports a missing tokenizer file', async () => {
    const r = await q('eval', modelFile, '--text', textFile, '--tokenizer', path.join(tmp, 'none.bin'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/E_TOKENIZER/);
  });
});
