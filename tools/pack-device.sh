#!/usr/bin/env bash
# Packs what a bare GPU machine (CUDA driver and libraries, but no Node and no registry access) needs to run
# q's GPU tests and benchmarks, into the git-ignored folder .device/:
#   node.xz          this machine's node binary
#   deps.tar.xz      a flat node_modules (no symlinks) with the test runner and the runtime's dependencies
#   dist/<pkg>/      every package's built JavaScript
#   native/<pkg>/    the built CUDA addon (packages/kernels-cuda/build: the one addon, comm's NCCL and
#                    all-reduce code included)
# Then run there, with .device carried:  bash tools/device-run.sh <command>
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device
if [ ! -s .device/node.xz ]; then
  xz -T2 -c "$(command -v node)" > .device/node.xz
fi
deps="vitest@3.2.7 fast-check@4.10.2 commander@14.0.3 cli-progress@3.12.0 @huggingface/tokenizers@0.2.0 @huggingface/jinja@0.5.11 fastify@5.12.8 prom-client@15.1.3 zod@4.6.7"
if [ ! -s .device/deps.tar.xz ] || [ "$(cat .device/deps.list 2>/dev/null)" != "$deps" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error --install-strategy=hoisted $deps)
  tar -C "$tmp" -cJf .device/deps.tar.xz node_modules
  echo "$deps" > .device/deps.list
  rm -rf "$tmp"
fi
# Q_PACK_FILTER narrows the build (e.g. '@q/kernels-cuda...' for one package and its dependencies); a package
# that fails to build is reported and left out, so one broken package does not block the others' device runs.
filter=()
[ -n "${Q_PACK_FILTER:-}" ] && filter=(--filter="$Q_PACK_FILTER")
node_modules/.bin/turbo run build build:native "${filter[@]}" --continue --output-logs=errors-only || \
  echo "pack-device: some builds failed (see above); packing what was built"
rm -rf .device/dist .device/native
for p in packages/*/; do
  n=$(basename "$p")
  [ -d "$p/dist" ] && mkdir -p .device/dist && cp -r "$p/dist" ".device/dist/$n"
  # Only the built .node files travel (object files would eat the transfer budget).
  # xz-compressed: the addon's cubins are most of what travels.
  if ls "$p"/build/*.node >/dev/null 2>&1; then
    mkdir -p ".device/native/$n"
    for f in "$p"/build/*.node; do xz -T2 -c "$f" > ".device/native/$n/$(basename "$f").xz"; done
  fi
done
du -sh .device
