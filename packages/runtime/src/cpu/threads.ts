import { shutdownGemmThreads } from './gemm';
import { shutdownQuantThreads } from './quant-pool';

/**
 * Terminates every worker thread of the CPU backend (they are re-created on demand). Idle workers never keep a
 * process alive; this is for programs that want them gone now.
 *
 * @example
 * ```ts
 * await shutdownThreads();
 * ```
 */
export async function shutdownThreads(): Promise<void> {
  await Promise.all([shutdownGemmThreads(), shutdownQuantThreads()]);
}
