#!/usr/bin/env bash
# Everything the GPU machine runs for @q/comm in one call (logs under $OUT): topology, the GPU tests on 2 and 4
# GPUs, and the all-reduce benchmark. Start it through tools/device-run.sh after tools/pack-device.sh.
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-/tmp/q-comm-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvidia-smi topo -m; } > "$OUT/topo.txt" 2>&1
if [ -z "${Q_NCCL_LIB:-}" ]; then
  Q_NCCL_LIB=$(find /opt /usr/lib /usr/local -name 'libnccl.so.2' 2>/dev/null | head -1)
  export Q_NCCL_LIB
fi
echo "NCCL library: ${Q_NCCL_LIB:-none found}" | tee -a "$OUT/topo.txt"
cat "$OUT/topo.txt"
WORLDS=${Q_WORLDS:-2,4}
Q_COMM_TEST_WORLDS=$WORLDS timeout "${Q_TEST_TIMEOUT:-200}" node node_modules/vitest/vitest.mjs run --project gpu comm/test/gpu 2>&1 | tee "$OUT/test.log"
timeout "${Q_BENCH_TIMEOUT:-200}" node packages/comm/bench/allreduce.mjs --worlds "$WORLDS" --json "$OUT/allreduce.json" 2>&1 | tee "$OUT/bench.log"
