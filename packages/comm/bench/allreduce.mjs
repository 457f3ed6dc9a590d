#!/usr/bin/env node
// q bench allreduce: NCCL vs q's fused and quantized all-reduce on 2 and 4 GPUs, bf16 messages of tokens x 8192.
// Usage: node packages/comm/bench/allreduce.mjs [--json out.json] [--worlds 2,4] [--tokens 1,8,...]
import { renameSync, writeFileSync } from 'node:fs';
import { benchAllreduce } from '@q/comm';

const args = process.argv.slice(2);
const get = (k) => {
  const i = args.indexOf(k);
  return i >= 0 ? args[i + 1] : undefined;
};
const list = (v) => (v ? v.split(',').map(Number) : undefined);
const results = await benchAllreduce({ worlds: list(get('--worlds')), tokens: list(get('--tokens')) });
const json = get('--json');
if (json) {
  writeFileSync(`${json}.tmp`, JSON.stringify(results, null, 2));
  renameSync(`${json}.tmp`, json);
  console.log(`wrote ${json}`);
}
