#!/usr/bin/env bash
# KV store benchmarks (issue 14), all with `brix bench`, about 10-12 minutes:
#  - kvstore: brixkv against redis-server in the same run, one load generator
#    speaking both protocols (redis over TCP and its UNIX socket, brixkv over
#    TCP and its same-host shared-memory path), 2 MiB and 4 KiB values,
#    GET and PUT, 1 and 4 client threads, 5 repeats; memory per payload byte,
#  - kvevict: prefix hit rate of the node's eviction policies on the Mooncake
#    FAST'25 traces (Qin et al., "Mooncake: Trading More Storage for Less
#    Computation", FAST 2025), read from ../shared/traces, at 5-40 % capacity,
#  - end to end: the first 300 requests of the Mooncake conversation trace
#    (at 2x its pace, engines in real time: the connector's real I/O counts in
#    simulated seconds) on 8 engine-sims behind the gateway, routed by
#    least-request and by brix's default (weighted), each without and with
#    one kvcache node.
# Results land in bench/results/{kvstore,kvevict,kvcache-e2e}; bench/report.py
# puts them into BENCHMARKS.md. Extra flags for each run: KVSTORE_ARGS,
# KVEVICT_ARGS, KVE2E_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/brix
mkdir -p bench/results bench/plots
# shellcheck disable=SC2086
"$B" bench --no-progress --scenario kvstore --out bench/results/kvstore --repeat 5 ${KVSTORE_ARGS:-}
TRACES=../shared/traces/mooncake-fast25
if [[ -f $TRACES/conversation_trace.jsonl && -f $TRACES/synthetic_trace.jsonl ]]; then
  # shellcheck disable=SC2086
  "$B" bench --no-progress --scenario kvevict --out bench/results/kvevict \
    --traces "$TRACES/conversation_trace.jsonl,$TRACES/synthetic_trace.jsonl" ${KVEVICT_ARGS:-}
  # Stored blocks of 4 KiB instead of 2 MiB keep the trace's ~10^5 unique
  # 16-token blocks within one node on a small machine; the simulated
  # transfer rate is scaled alike (100 Gbit/s for real-size blocks).
  # --time-scale 1: the connector's real I/O time is counted in simulated
  # seconds, so a faster clock would inflate it.
  # shellcheck disable=SC2086
  "$B" bench --no-progress --out bench/results/kvcache-e2e --scenario mooncake \
    --trace "$TRACES/conversation_trace.jsonl" --max-requests 300 --speed 2 --time-scale 1 \
    --max-model-len 32768 --max-output 512 --strategies least-request,weighted --kvcache \
    --kvcache-block-bytes 4KiB --kvcache-capacity 2GiB ${KVE2E_ARGS:-}
  cp bench/results/kvcache-e2e/ttft_cdf.svg bench/plots/kvcache-e2e-ttft.svg || true
else
  echo "kvstore: $TRACES not found; the eviction and end-to-end runs are skipped" >&2
fi
