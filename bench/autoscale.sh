#!/usr/bin/env bash
# Autoscaling comparison (issue #13) with `brix bench --scenario autoscale`:
# static peak provisioning, HPA, KPA, APA and SLO mode, each on a fresh
# `brix up` cluster of simulated A100s whose engines take --startup-delay auto
# (~82 simulated s for an 8B model) to load, replaying the first 30 minutes of
# the Azure LLM inference 2023 code trace (Patel et al., "Splitwise: Efficient
# generative LLM inference using phase splitting", ISCA 2024; CC-BY 4.0), read
# from ../shared/traces, at --time-scale 1/15 (about 2 minutes of wall time per
# policy). Then the same five policies on a day of the ServeGen language/m-large
# rate envelope (Xiang et al., "ServeGen", arXiv 2505.09999; Apache-2.0)
# compressed into 30 simulated minutes, with the code trace's request lengths:
# the slow diurnal swing is where scale-down and flapping show. Each comparison
# runs in about 12 minutes. Results land in bench/results/autoscale and
# bench/results/autoscale-servegen; plots are copied to bench/plots/.
set -euo pipefail
cd "$(dirname "$0")/.."
TRACE=../shared/traces/azure-llm-2023/AzureLLMInferenceTrace_code.csv
if [[ ! -f $TRACE ]]; then
  echo "autoscale: $TRACE not found; the policy comparison is skipped" >&2
  exit 0
fi
mkdir -p bench/plots
build/brix bench --scenario autoscale --trace "$TRACE" --no-progress \
  --out bench/results/autoscale "$@"
cp bench/results/autoscale/autoscale_replicas.svg bench/plots/autoscale-replicas.svg || true
cp bench/results/autoscale/autoscale_overlay.svg bench/plots/autoscale-overlay.svg || true
ENVELOPE=../shared/traces/servegen/language-m-large-aggregate-rate.csv
if [[ -f $ENVELOPE ]]; then
  build/brix bench --scenario autoscale --trace "$TRACE" --envelope "$ENVELOPE" --no-progress \
    --out bench/results/autoscale-servegen "$@"
  # (the per-request TTFT scatter, autoscale_ttft.svg, stays in the results directory: it is
  # megabytes of SVG)
  for p in replicas overlay; do
    cp "bench/results/autoscale-servegen/autoscale_$p.svg" \
      "bench/plots/autoscale-servegen-$p.svg" || true
  done
else
  echo "autoscale: $ENVELOPE not found; the envelope comparison is skipped" >&2
fi
