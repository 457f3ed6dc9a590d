#!/usr/bin/env bash
# Unpacks what tools/pack-device.sh put in .device/ on a bare GPU machine, then runs the given command in the
# repository root with that node first on PATH. Example:
#   bash tools/device-run.sh node node_modules/vitest/vitest.mjs run --project gpu
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/qnode
[ -x /tmp/qnode/node ] || { xz -dc .device/node.xz > /tmp/qnode/node && chmod +x /tmp/qnode/node; }
export PATH=/tmp/qnode:$PATH
[ -d node_modules/vitest ] || tar -C . -xJf .device/deps.tar.xz
mkdir -p node_modules/@q
for p in packages/*/; do
  n=$(basename "$p")
  if [ -d ".device/dist/$n" ]; then rm -rf "$p/dist" && cp -r ".device/dist/$n" "$p/dist"; fi
  if [ -d ".device/native/$n" ]; then
    rm -rf "$p/build" && mkdir -p "$p/build"
    for f in ".device/native/$n"/*.node.xz; do xz -dc "$f" > "$p/build/$(basename "$f" .xz)"; done
  fi
  ln -sfn "../../packages/$n" "node_modules/@q/$n"
done
# NVLink multicast stays off on shared multi-GPU hosts.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec "$@"
