set -uo pipefail
export PYTHONPATH=$PWD SIEVE_COMMIT= HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 SIEVE_CACHE=/tmp/sieve-cache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
for arm in "preset:" "l4:--batch-candidates 1 --lanes 4"; do
  name=${arm%%:*}; args=${arm#*:}
  t0=$EPOCHREALTIME
  timeout 200 python3 -m sieve.cli search --config gpu --budget 0.5 $args --run-dir /tmp/run-$name > $OUT/search-$name.log 2>&1
  echo "$name rc=$? wall $(awk -v a=$t0 -v b=$EPOCHREALTIME 'BEGIN{printf "%.1f", b-a}') s" | tee -a $OUT/wall.txt
  cp /tmp/run-$name/results.json $OUT/search-$name-results.json 2>/dev/null
  cp /tmp/run-$name/best_allocation.json $OUT/search-$name-allocation.json 2>/dev/null
  grep -E "search:|per forward|lanes|Traceback|Error" $OUT/search-$name.log | head -6
done
