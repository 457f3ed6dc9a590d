/**
 * Where libnccl.so.2 may be: the addon (in @q/kernels-cuda) opens NCCL only when a communicator is created, so
 * that importing q never needs it.
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Candidate paths of libnccl.so.2: Q_NCCL_LIB, the dynamic loader's search, then NCCL wheels of Python
 * environments (nvidia/nccl/lib) in the usual places.
 *
 * @example
 * ```ts
 * ncclCandidates({ Q_NCCL_LIB: '/opt/nccl/libnccl.so.2' })[0] // '/opt/nccl/libnccl.so.2'
 * ```
 */
export function ncclCandidates(env: Record<string, string | undefined> = process.env): string[] {
  const out: string[] = [];
  if (env.Q_NCCL_LIB) out.push(env.Q_NCCL_LIB);
  out.push('libnccl.so.2');
  out.push(
    '/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2',
    '/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnccl.so.2',
    '/usr/lib/x86_64-linux-gnu/libnccl.so.2',
  );
  const roots = [
    '/opt',
    '/usr/local/lib',
    '/usr/lib',
    env.VIRTUAL_ENV ?? '',
    env.HOME ? join(env.HOME, '.local/lib') : '',
  ].filter(Boolean);
  const seen = new Set<string>();
  // Python wheels put NCCL under site-packages/nvidia/<nccl|cu12|cu13>/lib; walk only folders that can lead there.
  const visit = (dir: string, depth: number, inNvidia: boolean) => {
    if (depth > 10 || seen.has(dir)) return;
    seen.add(dir);
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    if (entries.includes('libnccl.so.2')) out.push(join(dir, 'libnccl.so.2'));
    for (const e of entries) {
      const next = inNvidia || e === 'nvidia';
      if (
        next ||
        /^(python3[\d.]*|site-packages|dist-packages|lib|lib64|\.venv|venv)$/.test(e) ||
        (depth === 0 && !e.startsWith('.'))
      ) {
        visit(join(dir, e), depth + 1, next);
      }
    }
  };
  for (const r of roots) visit(r, 0, false);
  return [...new Set(out)];
}
