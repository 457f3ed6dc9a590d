export const PACKAGE = '@q/kernels-cuda';
