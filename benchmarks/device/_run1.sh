set -uo pipefail
bash .device/part4/install.sh >/dev/null 2>&1
export PYTHONPATH=$PWD SIEVE_COMMIT=3f4dc8c HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SIEVE_CACHE=/tmp/sieve-cache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q -p no:cacheprovider -x tests/search/test_shared_forward.py 2>&1 | tail -3
timeout 330 python3 benchmarks/throughput.py --search-loop --models smollm2-135m --modes in_place --graphs on --lanes 4 --batch-candidates 12,24 --search-candidates 24 --no-candidate-rows --out-dir $OUT --tag shared 2>&1 | grep -v Warning | tail -12
