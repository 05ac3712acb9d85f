#!/usr/bin/env bash
# One-GPU quality of depth pruning on SmolLM2-135M + Rotten Tomatoes (issue: a smaller model that
# really runs faster): dense, the depth baselines (ShortGPT on general / task text, the angular run,
# greedy task-aware on validation) and the depth search (3 seeds) at BUDGET (default 0.25), then
# EvoPress's depth search (general KL) and the deploy search. Rows are written after each one, so
# a cut-off run keeps what it measured. Wheels as for h100_suite.sh, installed first.
#   SIEVE_COMMIT=<hash> bash benchmarks/device/h200_depth.sh
set -uo pipefail
source "$(dirname "$0")/env.sh"
budget=${BUDGET:-0.25}
PYTHONPATH=$(pwd) timeout ${FIRST_S:-400} python3 benchmarks/quality.py --budgets "$budget" --rows dense,depth,search-depth \
  --seeds 0,1,2 --runs /tmp/runs --out-dir "$out" --tag depth > "$out/depth.log" 2>&1
echo "depth rows: exit $?"
PYTHONPATH=$(pwd) timeout ${SECOND_S:-150} python3 benchmarks/quality.py --budgets "$budget" \
  --rows search-depth-general,search-deploy --seeds 0 --runs /tmp/runs --out-dir "$out" --tag depth-more \
  > "$out/depth-more.log" 2>&1
echo "more rows: exit $?"
grep -hE "^(dense|shortgpt|angular|greedy|search)" "$out"/depth*.log
