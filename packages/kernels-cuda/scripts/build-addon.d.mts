/** Options of {@link buildCudaAddon}. */
export interface BuildCudaAddonOptions {
  /** The package directory holding csrc/ and package.json. */
  pkgDir: string;
  /** File name stem of the addon, e.g. `q_cuda` → build/q_cuda-linux-x64-v0.1.0.node. */
  baseName: string;
  /** C++ standard of the .cu files (default c++17). */
  cudaStd?: string;
  /** Preprocessor definitions for every file, e.g. `Q_COMM_VERSION="0.1.0"`. */
  defines?: string[];
}

/**
 * Builds the CUDA addon of a q package with nvcc (sm_80 + sm_90a, cudart static); resolves to an exit code,
 * 0 also when it skipped because nvcc or the headers are absent.
 *
 * @example
 * ```ts
 * process.exitCode = await buildCudaAddon({ pkgDir: process.cwd(), baseName: 'q_cuda' });
 * ```
 */
export function buildCudaAddon(options: BuildCudaAddonOptions): Promise<number>;
