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

// The program owns the signals, the libraries never do: the first Ctrl-C aborts the running generation,
// evaluation or quantization (its `finally` blocks clean up, e.g. a partial output directory) and the exit
// status is 130; a second one exits at once.
const controller = new AbortController();
const onSignal = (): void => {
  if (controller.signal.aborted) process.exit(130);
  controller.abort();
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

runCli(process.argv.slice(2), undefined, controller.signal).then(
  async (code) => {
    await shutdownThreads();
    process.exitCode = code;
  },
  (e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  },
);
