#!/usr/bin/env bash
# Routing benchmarks (issue #5), all with `brix bench` on 8 simulated H100s:
#  - the shared-prefix workload at about 80% of the fleet's capacity (latency;
#    capacity: the saturation throughput of cache-aware routing, 90 req/s),
#    and at 40%, where random routing is not overloaded yet,
#  - the same workload past saturation (throughput),
#  - the Mooncake FAST'25 conversation trace (Qin et al., "Mooncake: Trading
#    More Storage for Less Computation", FAST 2025), read from ../shared/traces.
# Each strategy runs on a fresh fleet; results land in bench/results/routing-*,
# CDF plots are copied to bench/plots/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/brix
run() {
  local name=$1; shift
  "$B" bench --no-progress --out "bench/results/routing-$name" "$@"
  cp "bench/results/routing-$name/ttft_cdf.svg" "bench/plots/routing-$name-ttft.svg" || true
  cp "bench/results/routing-$name/e2e_cdf.svg" "bench/plots/routing-$name-e2e.svg" || true
}
mkdir -p bench/plots
run shared-prefix-80 --scenario shared-prefix
run shared-prefix-40 --scenario shared-prefix --rate 36
run shared-prefix-sat --scenario shared-prefix --rate 150
TRACE=../shared/traces/mooncake-fast25/conversation_trace.jsonl
if [[ -f $TRACE ]]; then
  run mooncake --scenario mooncake --trace "$TRACE" --max-requests 800 --speed 2.5 \
    --max-model-len 32768 --max-output 512 \
    --strategies random,least-request,weighted,prefix-cache-precise,sglang-cache-aware
else
  echo "routing: $TRACE not found; Mooncake comparison skipped" >&2
fi
