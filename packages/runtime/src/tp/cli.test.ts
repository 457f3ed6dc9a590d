import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CliIO, runCli } from '../cli-main';
import { sharedDir } from '../shared-data';
import { refuseGpuTensorParallel } from './model';

const shared = sharedDir();
const modelFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const textFile = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
const present = shared !== null && fs.existsSync(modelFile) && fs.existsSync(textFile);
if (!present)
  console.warn('skipping q --tp CLI tests: ../shared/models/stories260K or ../shared/data is absent');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-tp-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function q(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io: CliIO = { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s), isTTY: false };
  const code = await runCli(argv, io);
  return { code, stdout, stderr };
}

describe.skipIf(!present)('q generate and q eval with --tp (stories260K)', () => {
  it('q generate --tp 2 and --tp 4 with the exact all-reduce print what --tp 1 prints', async () => {
    const args = ['generate', modelFile, '--prompt', 'Once upon a time', '--max-tokens', '24'];
    const one = await q(...args);
    expect(one.code).toBe(0);
    for (const tp of ['2', '4']) {
      const r = await q(...args, '--tp', tp, '--allreduce', 'exact');
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(one.stdout);
    }
  });

  it('q eval --tp 2 --allreduce int8 --compare reports agreement with the one-rank model', async () => {
    const text = path.join(tmp, 'eval.txt');
    fs.writeFileSync(text, fs.readFileSync(textFile, 'utf8').split(/\r?\n/).slice(0, 3).join('\n'));
    const r = await q(
      'eval',
      modelFile,
      '--text',
      text,
      '--ctx',
      '64',
      '--tp',
      '2',
      '--allreduce',
      'int8',
      '--compare',
      modelFile,
      '--json',
    );
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { top1: number; kl: number };
    expect(j.top1).toBeGreaterThanOrEqual(0.97);
    expect(j.kl).toBeGreaterThan(0);
    expect(j.kl).toBeLessThan(0.01);
  });

  it('refuses --tp that does not divide the heads, GPU-only all-reduce modes on the CPU, and --device cuda without the GPUs', async () => {
    const r3 = await q('generate', modelFile, '--prompt', 'x', '--tp', '3');
    expect(r3.code).not.toBe(0);
    expect(r3.stderr).toMatch(
      /Expected a tensor-parallel degree that divides the 8 attention heads for --tp but received 3/,
    );
    const nccl = await q('generate', modelFile, '--prompt', 'x', '--tp', '2', '--allreduce', 'nccl');
    expect(nccl.stderr).toMatch(
      /Expected one of auto, exact, int8, int4 for --allreduce on the cpu backend but received "nccl"/,
    );
    const cuda = await q('generate', modelFile, '--prompt', 'x', '--tp', '64', '--device', 'cuda');
    expect(cuda.code).not.toBe(0);
    // Without GPUs the device itself is refused first; with fewer than 64, the count.
    expect(cuda.stderr).toMatch(
      /Expected a usable GPU for --device|Expected 64 visible CUDA devices for --tp 64/,
    );
    await expect(refuseGpuTensorParallel(64)).rejects.toThrow(
      /Expected 64 visible CUDA devices for --tp 64 but received \d+/,
    );
    const bench = await q('bench', 'e2e', '--tp', '2', '--allreduce', 'exact');
    expect(bench.stderr).toMatch(
      /Expected one of auto, nccl, fused, int8, int4 for --allreduce on the cuda backend/,
    );
  });
});
