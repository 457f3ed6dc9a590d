#!/usr/bin/env node
import { runCli } from './cli-main';
import { shutdownThreads } from './cpu/threads';

runCli(process.argv.slice(2)).then(
  async (code) => {
    await shutdownThreads();
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  },
);
