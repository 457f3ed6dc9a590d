#!/usr/bin/env node
// Reads one or more vitest JSON reports and prints the single closing line `N passed, M failed[, K skipped]`.
// Exits non-zero when a report is missing, reports a failure, or counts no test at all.
import { existsSync, readFileSync } from 'node:fs';

let passed = 0;
let failed = 0;
let skipped = 0;
let ok = true;
// `--failed-steps N`: gate steps that failed outside the test runner (lint, build, release checks) count as
// failures too, so the closing line never reads "0 failed" for a gate that failed.
const args = process.argv.slice(2);
const stepsAt = args.indexOf('--failed-steps');
if (stepsAt >= 0) {
  failed += Number(args[stepsAt + 1] ?? 0);
  args.splice(stepsAt, 2);
}
for (const file of args) {
  if (!existsSync(file)) {
    console.error(`summary: report ${file} is missing (the test run did not finish)`);
    ok = false;
    continue;
  }
  const r = JSON.parse(readFileSync(file, 'utf8'));
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // Suites that fail to load count no tests but must fail the run.
  for (const s of r.testResults ?? []) {
    if (s.status === 'failed' && (s.assertionResults ?? []).every((a) => a.status !== 'failed')) {
      console.error(`summary: ${s.name} failed to run: ${String(s.message ?? '').split('\n')[0]}`);
      failed += 1;
    }
  }
  if (r.success === false) ok = false;
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(ok && failed === 0 && passed > 0 ? 0 : 1);
