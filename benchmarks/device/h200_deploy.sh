#!/usr/bin/env bash
# One-GPU steps of the deployment issue (a smaller model that really runs faster), each well inside
# one 10-minute device call; rows are written as they are measured, so a cut-off step keeps them.
# Wheels as for h100_suite.sh, installed first. Pass SIEVE_COMMIT=<hash>.
#   bash benchmarks/device/h200_deploy.sh speed      # GEMM shapes per rank, then the random 8B Llama, 8 of 32 blocks removed
#   bash benchmarks/device/h200_deploy.sh speed8b    # the random 8B Llama only
#   bash benchmarks/device/h200_deploy.sh quality    # depth rows at 25 % (dense, baselines, 3 search seeds)
#   bash benchmarks/device/h200_deploy.sh tolerance  # the largest depth reduction within 5 points of dense
#   bash benchmarks/device/h200_deploy.sh tol-rows   # baselines, zeros and deploy search at the tolerance step's budget (0.316)
#   bash benchmarks/device/h200_deploy.sh smol-prep  # SmolLM2 low-rank, depth and deploy searches at 25 % and their exports
#   bash benchmarks/device/h200_deploy.sh smol       # those exports and dense through deploy.py
set -uo pipefail
source "$(dirname "$0")/env.sh"
sieve="env PYTHONPATH=$here python3 -m sieve.cli"
case ${1:?step} in
  speed)
    timeout 120 $py benchmarks/gemm_shapes.py --out-dir "$out" > "$out/gemm.log" 2>&1; echo "gemm: exit $?"
    grep "worst" "$out/gemm.log"
    bash "$0" speed8b ;;
  speed8b)
    timeout 470 $py benchmarks/deploy.py --llama-8b --out-dir "$out" --tag 8b \
      > "$out/deploy-8b.log" 2>&1; echo "8b: exit $?"
    grep -E "^llama|Error|error" "$out/deploy-8b.log" | tail -8 ;;
  tol-rows)
    timeout 540 $py benchmarks/quality.py --budgets ${TOL_BUDGET:-0.316} --rows dense,depth,uniform-lowrank,search-task,search-deploy \
      --seeds 0 --runs /tmp/runs --out-dir "$out" --tag tolerance-rows > "$out/tol-rows.log" 2>&1; echo "tol-rows: exit $?"
    grep -hE "^(dense|shortgpt|angular|greedy|search|uniform)|Error" "$out/tol-rows.log" ;;
  quality)
    timeout 540 $py benchmarks/quality.py --budgets 0.25 --rows dense,depth,search-depth --seeds 0,1,2 \
      --runs /tmp/runs --out-dir "$out" --tag depth > "$out/depth.log" 2>&1; echo "quality: exit $?"
    grep -hE "^(dense|shortgpt|angular|greedy|search)|Error" "$out/depth.log" ;;
  tolerance)
    timeout 400 $sieve search --config gpu --space depth --tolerance 0.05 --run-dir /tmp/tol-depth \
      > "$out/tolerance-depth.log" 2>&1; echo "tolerance: exit $?"
    cp /tmp/tol-depth/frontier.json "$out/tolerance-depth-frontier.json" 2>/dev/null
    tail -12 "$out/tolerance-depth.log" ;;
  smol-prep)  # zeros keep dense shapes (same tensors, same speed): the table's zeros row is the dense row
    for space in lowrank depth deploy; do
      timeout 170 $sieve search --config gpu --space $space --budget 0.25 --run-dir /tmp/smol-$space \
        > "$out/smol-$space.log" 2>&1; echo "$space: exit $?"
      $sieve export /tmp/smol-$space --to hf --out /tmp/x-$space >> "$out/export.log" 2>&1
      cp /tmp/smol-$space/results.json "$out/smol-$space-results.json"
    done; tail -3 "$out/export.log" ;;
  smol)
    model=$(ls -d $SIEVE_CACHE/models/smollm2-135m-* | head -1)
    timeout 560 $py benchmarks/deploy.py --variant dense="$model" --variant depth=/tmp/x-depth --variant deploy=/tmp/x-deploy \
      --variant lowrank=/tmp/x-lowrank --out-dir "$out" --tag smollm2 > "$out/deploy-smol.log" 2>&1
    echo "smol: exit $?"; grep -E "^folders|Error|error" "$out/deploy-smol.log" | tail -8 ;;
esac
