export * from './attention';
export * from './bench';
export type { NativeArLayout, NativeBinding, NativeDeviceProperties } from './binding';
export * from './device';
export * from './dispatch';
export * from './fill';
export * from './llama-ops';
export * from './native';
export * from './ops';
export * from './pack';
export * from './tune';

/** The package name, for messages. */
export const PACKAGE = '@q/kernels-cuda';
