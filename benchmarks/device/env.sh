# Sourced by the one-GPU device scripts (h200_*.sh): offline, unbuffered, one sieve cache per lease,
# results under $OUT; `here` is the copied tree (the device's working copy), `py` runs its code.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SIEVE_CACHE=/tmp/sieve-cache SIEVE_COMMIT=${SIEVE_COMMIT:-unknown}
here=$(pwd)
out=${OUT:-/tmp/out}
mkdir -p "$out"
py="env PYTHONPATH=$here python3"
