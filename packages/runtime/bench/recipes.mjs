#!/usr/bin/env node
// Every recipe through the CLI on one model: `q quantize` (calibration on the first 40% of the text's lines)
// then `q eval --compare <float model>` on the rest. Prints the README table (markdown) and FPTQ's plan, and
// writes everything as JSON. Needs a build (`pnpm q` or `turbo run build --filter=@q/runtime...`).
//
//   node packages/runtime/bench/recipes.mjs [model] [text] [out.json]
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..', '..');
const shared = path.resolve(repo, '..', 'shared');
const model = process.argv[2] ?? path.join(shared, 'models', 'stories260K', 'stories260K.bin');
const text = process.argv[3] ?? path.join(shared, 'data', 'tinystories-valid-sample.txt');
const outJson = process.argv[4] ?? path.join(here, 'recipes.json');
const cli = path.join(repo, 'packages', 'runtime', 'dist', 'cli.js');
const recipes = ['fptq', 'w4a8-static', 'w4a8-rtn', 'odyssey', 'w8a8', 'w4a16'];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-recipes-'));
const lines = fs
  .readFileSync(text, 'utf8')
  .split(/\r?\n/)
  .filter((l) => l.length > 0);
const cut = Math.floor(lines.length * 0.4);
const calib = path.join(tmp, 'calib.txt');
const evalText = path.join(tmp, 'eval.txt');
fs.writeFileSync(calib, lines.slice(0, cut).join('\n'));
fs.writeFileSync(evalText, lines.slice(cut).join('\n'));

const q = (...args) => {
  const cmd = ['node', cli, ...args].map((a) => (a.includes(' ') ? JSON.stringify(a) : a)).join(' ');
  console.error(`$ ${cmd}`);
  return JSON.parse(execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 }));
};

const float = q('eval', model, '--text', evalText, '--json');
const rows = [];
let plan = [];
for (const recipe of recipes) {
  const dir = path.join(tmp, recipe);
  const qz = q('quantize', model, '--recipe', recipe, '--calib', calib, '--out', dir, '--force', '--json');
  const ev = q('eval', dir, '--text', evalText, '--compare', model, '--json');
  rows.push({
    recipe,
    ppl: ev.ppl,
    dPplPct: (ev.ppl / float.ppl - 1) * 100,
    top1: ev.top1,
    kl: ev.kl,
    tokens: ev.tokens,
  });
  if (recipe === 'fptq') plan = qz.plan;
}
fs.rmSync(tmp, { recursive: true, force: true });

const table = [
  `| recipe | ppl | Δ ppl % | top-1 | KL |`,
  `| --- | ---: | ---: | ---: | ---: |`,
  `| float32 | ${float.ppl.toFixed(4)} | 0 | 100% | 0 |`,
  ...rows.map(
    (r) =>
      `| ${r.recipe} | ${r.ppl.toFixed(4)} | ${r.dPplPct >= 0 ? '+' : ''}${r.dPplPct.toFixed(2)} | ${(r.top1 * 100).toFixed(2)}% | ${r.kl.toFixed(4)} |`,
  ),
].join('\n');
const planTable = [
  '| layer | range | act | LAE | static scale |',
  '| --- | ---: | --- | --- | ---: |',
  ...plan.map(
    (p) =>
      `| ${p.name} | ${p.range.toFixed(3)} | ${p.act} | ${p.lae ? 'yes' : 'no'} | ${p.staticScale !== undefined ? p.staticScale.toPrecision(6) : '-'} |`,
  ),
].join('\n');
console.log(
  `model ${model}, calibration ${cut} lines, evaluation ${lines.length - cut} lines (${float.tokens} tokens, ctx ${float.ctx})\n`,
);
console.log(table);
console.log(`\nFPTQ plan:\n\n${planTable}`);
const tmpOut = `${outJson}.${process.pid}.tmp`;
fs.writeFileSync(
  tmpOut,
  `${JSON.stringify({ model, text, date: new Date().toISOString(), float, rows, plan }, null, 2)}\n`,
);
fs.renameSync(tmpOut, outJson);
console.error(`wrote ${outJson}`);
