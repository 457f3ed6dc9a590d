/** Options of {@link buildCudaAddon}. */
export interface BuildCudaAddonOptions {
  /** The package directory holding csrc/ and package.json. */
  pkgDir: string;
  /** File name stem of the addon, e.g. `q_cuda` → build/q_cuda-linux-x64-v0.1.0.node. */
  baseName: string;
  /** C++ standard of the .cu files (default c++20). */
  cudaStd?: string;
  /** Preprocessor definitions for every file besides Q_ADDON_VERSION, e.g. `Q_TRACE=1`. */
  defines?: string[];
}

/**
 * Builds the q CUDA addon with nvcc (sm_80 + sm_90a cubins, compute_90 PTX, cudart static); resolves to an exit code,
 * 0 also when it skipped because nvcc or the headers are absent.
 *
 * @example
 * ```ts
 * process.exitCode = await buildCudaAddon({ pkgDir: process.cwd(), baseName: 'q_cuda' });
 * ```
 */
export function buildCudaAddon(options: BuildCudaAddonOptions): Promise<number>;
