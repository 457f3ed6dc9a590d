export const PACKAGE = '@q/runtime';
