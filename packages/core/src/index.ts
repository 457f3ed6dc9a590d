export * from './config';
export * from './dtype';
export * from './errors';
export * from './half';
export * from './int4';
export * from './tensor';
