#!/usr/bin/env node
console.log('q: not built yet');
