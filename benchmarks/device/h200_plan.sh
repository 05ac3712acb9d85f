#!/usr/bin/env bash
# One-GPU checks of the execution plan and the phase table (issue: one execution plan, setup cost
# visible): `sieve search --config gpu` over every built-in space and fitness (a few generations
# each: the plan, its one-line fallbacks and a finished search are what is checked), then the whole
# preset search on SmolLM2 with its phase table, then benchmarks/quality.py's search rows under the
# preset. Wheels as for h100_suite.sh, installed first. Pass SIEVE_COMMIT=<hash>.
#   bash benchmarks/device/h200_plan.sh spaces|whole|quality
set -euo pipefail
source "$(dirname "$0")/env.sh"
sieve() { PYTHONPATH=$here python3 -m sieve.cli "$@"; }
summary() {  # one line per run: plan, notes, loop and phase seconds, best fitness, test acc of the best
  python3 - "$@" <<'PY' | tee -a "$out/summary.txt"
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(f"{path}/results.json"))
ex, ph = r["execution"], r["phases"]
best = next(row for row in r["table"] if row["method"] == "sieve-search")
total = sum(ph.values())
print(f"{name}: {ex['strategy']} x{ex['candidates_per_forward']} {ex['pruner_mode']} graphs={ex['cuda_graphs']} "
      f"notes={len(ex['notes'])} | loop {ph.get('loop', 0):.1f}s of {total:.1f}s ({ph.get('loop', 0) / total:.0%}) "
      f"phases {json.dumps(ph)} | best {r['best_fitness']:.4f} test acc {best['task_acc']:.3f}")
PY
}
case ${1:?step} in
  spaces)  # every built-in space with the default fitness, the fitnesses that change the plan on two of them, 3 generations each
    for run in ${RUNS:-per_matrix:task_nll per_matrix:kl per_matrix:general_kl lowrank:task_nll lowrank:kl mixed:task_nll \
               nm:task_nll per_block:task_nll per_type:task_nll evopress:task_nll}; do
      space=${run%%:*}; fit=${run##*:}
      budget=0.5; case $space in nm) budget=0.3 ;; lowrank|mixed) budget=0.2 ;; esac
      name=$space-$fit
      sieve search --config gpu --space $space --budget $budget --fitness $fit --generations 3 \
        --run-dir /tmp/run-$name > "$out/$name.log" 2>&1 || { echo "$name FAILED" | tee -a "$out/summary.txt"; tail -3 "$out/$name.log"; continue; }
      grep -c "does not apply" "$out/$name.log" | sed "s/^/$name fallback lines: /" | tee -a "$out/summary.txt" || true
      summary $name /tmp/run-$name
    done
    sieve search --config gpu --budget 0.5 --general-weight 0.5 --generations 3 --run-dir /tmp/run-gw > "$out/gw.log" 2>&1
    summary general-weight /tmp/run-gw
    sieve search --config gpu --budget 0.5 --generations 3 --batch-candidates 8 --space lowrank --run-dir /tmp/run-demand \
      > "$out/demand.log" 2>&1 && echo "demand: UNEXPECTED success" || { echo "demand (exit $?): $(cat "$out/demand.log")"; ls /tmp/run-demand 2>&1; } | tee -a "$out/summary.txt" ;;
  whole)  # the preset's whole search on SmolLM2, twice (the second with warm compile caches), phase table
    for i in 1 2; do
      t0=$EPOCHREALTIME
      sieve search --config gpu --budget 0.5 --run-dir /tmp/run-whole$i > "$out/whole$i.log" 2>&1
      awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="whole$i" 'BEGIN{printf "%s wall %.1f s\n", n, b - a}' | tee -a "$out/summary.txt"
      summary whole$i /tmp/run-whole$i
      tail -2 "$out/whole$i.log" | tee -a "$out/summary.txt"
      cp /tmp/run-whole$i/results.json "$out/whole$i-results.json"
    done ;;
  quality)  # quality.py's preset rows that crashed before the plan (low-rank and mixed searches), one seed
    PYTHONPATH=$here python3 benchmarks/quality.py --help | head -40 ;;
esac
