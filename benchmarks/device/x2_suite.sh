#!/usr/bin/env bash
# One device call on nvidia-h200-x2 (see DEVELOPERS.md for staging .device/ wheels first):
#   GPU 0: throughput (SmolLM2, random Llama 1B and 8B) then the uniform rows incl. wanda-task ablation;
#   GPU 1: quality search rows for seed 1; then Ray 1 vs 2 GPU actors on the real search path.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SIEVE_CACHE=/tmp/sieve-cache
python3 -c "import pymoo" 2>/dev/null || { bash .device/part4/install.sh && python3 -m pip install -q --no-deps --no-index .device/data/*.whl; }
python3 -c "from sieve.models.loading import load_model; load_model('smollm2-135m')" >/dev/null 2>&1
SEEDS=${SEEDS:-1}
( CUDA_VISIBLE_DEVICES=0 timeout 330 python3 benchmarks/throughput.py --out-dir "$OUT" --tag x2 2>&1 | grep -v "it/s" | tail -6
  CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/quality.py --rows uniform --budgets 0.5 --out-dir "$OUT" --tag ablation 2>&1 | grep "uniform" ) &
( CUDA_VISIBLE_DEVICES=1 timeout 400 python3 benchmarks/quality.py --rows search-task,search-general --budgets 0.6,0.7 --seeds "$SEEDS" \
    --runs runs-gpu1 --out-dir "$OUT" --tag "s$SEEDS" 2>&1 | grep "search-" ) &
wait
timeout 150 python3 benchmarks/throughput.py --models none --ray-actors 1,2 --out-dir "$OUT" --tag x2-ray 2>&1 | grep -v "it/s" | tail -4
