export const PACKAGE = '@q/comm';
