#!/usr/bin/env node
import { runCli } from './cli-main';
import { shutdownThreads } from './cpu/threads';

// A reader that goes away (`q ... | head`) ends the program quietly, as other command-line tools do.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}

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
