#!/usr/bin/env bash
# One-GPU steps of the deployment issue (a smaller model that really runs faster), each well inside
# one 10-minute device call; rows are written as they are measured, so a cut-off step keeps them.
# Wheels as for h100_suite.sh, installed first. Pass SIEVE_COMMIT=<hash>.
#   bash benchmarks/device/h200_deploy.sh speed      # GEMM shapes per rank, then the random 8B Llama, 8 of 32 blocks removed
#   bash benchmarks/device/h200_deploy.sh quality    # depth rows at 25 % (dense, baselines, 3 search seeds)
#   bash benchmarks/device/h200_deploy.sh tolerance  # the largest depth reduction within 5 points of dense
#   bash benchmarks/device/h200_deploy.sh smol-prep  # SmolLM2 low-rank and deploy searches at 25 %, exports of them and of quality's depth run
#   bash benchmarks/device/h200_deploy.sh smol       # those exports and dense through deploy.py
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SIEVE_CACHE=/tmp/sieve-cache SIEVE_COMMIT=${SIEVE_COMMIT:-unknown}
here=$(pwd)
out=${OUT:-/tmp/out}
mkdir -p "$out"
py="env PYTHONPATH=$here python3"
sieve="env PYTHONPATH=$here python3 -m sieve.cli"
case ${1:?step} in
  speed)
    timeout 120 $py benchmarks/gemm_shapes.py --out-dir "$out" > "$out/gemm.log" 2>&1; echo "gemm: exit $?"
    grep "worst" "$out/gemm.log"
    timeout 470 $py benchmarks/deploy.py --llama-8b --out-dir "$out" --tag 8b \
      > "$out/deploy-8b.log" 2>&1; echo "8b: exit $?"
    grep -E "^llama|Error|error" "$out/deploy-8b.log" | tail -8 ;;
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
    depth=$(ls -d /tmp/runs/search-depth-b0.25-s0-* | head -1)
    timeout 150 $sieve search --config gpu --space benchmarks/spaces/lowrank_task_x64.yaml --budget 0.25 --generations 8 \
      --run-dir /tmp/smol-lowrank > "$out/smol-lowrank.log" 2>&1; echo "lowrank: exit $?"
    timeout 150 $sieve search --config gpu --space deploy --budget 0.25 --generations 8 --run-dir /tmp/smol-deploy \
      > "$out/smol-deploy.log" 2>&1; echo "deploy: exit $?"
    $sieve export /tmp/smol-lowrank --to hf --out /tmp/x-lowrank > "$out/export.log" 2>&1
    $sieve export "$depth" --to hf --out /tmp/x-depth >> "$out/export.log" 2>&1
    $sieve export /tmp/smol-deploy --to hf --out /tmp/x-deploy >> "$out/export.log" 2>&1; tail -3 "$out/export.log"
    for r in /tmp/smol-lowrank "$depth" /tmp/smol-deploy; do cp "$r/results.json" "$out/$(basename $r)-results.json"; done ;;
  smol)
    model=$(ls -d $SIEVE_CACHE/models/smollm2-135m-* | head -1)
    timeout 560 $py benchmarks/deploy.py --variant dense="$model" --variant depth=/tmp/x-depth --variant deploy=/tmp/x-deploy \
      --variant lowrank=/tmp/x-lowrank --out-dir "$out" --tag smollm2 > "$out/deploy-smol.log" 2>&1
    echo "smol: exit $?"; grep -E "^folders|Error|error" "$out/deploy-smol.log" | tail -8 ;;
esac
