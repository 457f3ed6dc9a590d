export * from './activation';
export * from './gemm';
export * from './intscale';
export * from './types';
export * from './weights';
