#!/bin/bash
# Regenerate every shipped result of the default model, in dependency order, with each one's documented
# command (issue 16 item 5: after the default model changes). Run it alone on an idle machine (about an hour
# on the 2-core VM; timings inside are only honest without a second torch process). Each step logs its
# wall time; a failed step stops the script. Usage: bash benchmarks/reship_default.sh [FIRST_STEP]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FIRST=${1:-1}
RUNS=runs/reship
mkdir -p "$RUNS"
ABLATIONS="ablations,pruning,peers,atedm-63=atedm:ratio=0.63,tgate-g8=tgate:gate_step=8,steps-10=steps:steps=10,steps-14=steps:steps=14,steps-16=steps:steps=16"

step() {  # step N NAME COMMAND...
  local n=$1 name=$2; shift 2
  if (( n < FIRST )); then return; fi
  echo "=== [$n] $name: $*" >&2
  local t0=$SECONDS
  "$@"
  echo "=== [$n] $name done in $((SECONDS - t0)) s" >&2
}

fresh() {  # fresh DIR COMMAND...: the command on an empty DIR (a reship never resumes an older model's rows)
  rm -rf "$1"; shift
  "$@"
}

last_line_to() {  # last_line_to FILE COMMAND...: the command's last stdout line into FILE, only if it succeeded
  local file=$1; shift
  "$@" | tail -n 1 > "$file.tmp"  # pipefail (set above) fails the step when the command fails
  mv "$file.tmp" "$file"
}

# 1-2: PHAST policies (the sweeps' reuse-phast rows and the app's policy=phast read them)
step 1 policy-20 $PY -m analysis search-policy --model default --steps 20 --prompts 4 --held-out 8 --iterations 6 --no-progress
step 2 policy-30 $PY -m analysis search-policy --model default --steps 30 --prompts 4 --held-out 8 --iterations 6 --no-progress
# 3-4: the model's own quality and what its maps mean
step 3 eval-default last_line_to docs/results/eval_default_100prompts.json $PY -m benchmarks.eval_default --prompts 100 --grid assets/sample_grid.png
step 4 eval-signals last_line_to docs/results/eval_signals_binding_default.json $PY -m benchmarks.eval_signals --prompts 20 --binding-prompts 24
# 5-9: the default grid, the observations (they read its summary), the ablations (+ AT-EDM's rankings like for
# like, + peers)
step 5 sweep-default fresh $RUNS/default-20 $PY -m analysis sweep --prompts assets/prompts/shapes-30.txt --grid default --seeds 0,1 --steps 20 --out $RUNS/default-20 --threads 2 --no-figures
step 6 merge-default $PY -m analysis sweep --out $RUNS/default-20 --merge --ship
step 7 sweep-ablations fresh $RUNS/ablations-20 $PY -m analysis sweep --prompts assets/prompts/shapes-30.txt --grid "$ABLATIONS" --seeds 0,1 --steps 20 --out $RUNS/ablations-20 --threads 2 --no-figures
step 8 merge-ablations $PY -m analysis sweep --out $RUNS/ablations-20 --merge --ship --ship-as ablations-20
step 9 observations bash -o pipefail -c "rm -rf $RUNS/observations-20 && $PY -m analysis observations --seeds 0,1 --steps 20 --out $RUNS/observations-20 --ship | tail -n 1"
# 10: per-step sensitivity
step 10 sensitivity bash -o pipefail -c "rm -rf $RUNS/sensitivity-20 && $PY -m analysis sensitivity --seeds 0,1 --steps 20 --out $RUNS/sensitivity-20 && mkdir -p assets/results/sensitivity-20 && cp $RUNS/sensitivity-20/curve.json $RUNS/sensitivity-20/curve.csv assets/results/sensitivity-20/ && rm -rf assets/results/sensitivity-20/figures && cp -r $RUNS/sensitivity-20/figures assets/results/sensitivity-20/ && find assets/results/sensitivity-20/figures -type f ! -name "*.png" -delete"
# 11-13: the judge on this generator, AT-EDM's costs and which tokens each ranking prunes
step 11 eval-judge $PY -m benchmarks.eval_judge --json docs/results/judge_eval.json --disagreement-grid docs/figures/judge_disagreements.png
step 12 atedm-costs last_line_to docs/results/atedm_costs_default.json $PY -m benchmarks.atedm_costs
step 13 atedm-fairness $PY -m benchmarks.atedm_fairness --prompts 30 --seeds 0 --json docs/results/atedm_fairness_default.json
# 14: T-GATE against the reference package, when a scratch venv with tgate==1.0.0 is named (TGATE_PY=.../python;
# see benchmarks/crosscheck_tgate.py for how to make one)
if [[ -n "${TGATE_PY:-}" ]]; then
  step 14 crosscheck-tgate "$TGATE_PY" benchmarks/crosscheck_tgate.py --model default --json docs/results/crosscheck_tgate_default.json
fi
# 15-17: DeepCache against step reduction at equal latency, and against the DeepCache 0.1.1 package where it is
# installed (the sweep's peer rows need it too)
step 15 sweep-deepcache fresh $RUNS/deepcache-20 $PY -m analysis sweep --grid "deepcache,steps,tg8=tgate:gate_step=8,tg8-dc3=tgate:gate_step=8&deepcache:cache_interval=3,tg8-dc5=tgate:gate_step=8&deepcache:cache_interval=5" --limit-prompts 10 --seeds 0,1 --steps 20 --out $RUNS/deepcache-20 --threads 2 --no-figures
step 16 merge-deepcache $PY -m analysis sweep --out $RUNS/deepcache-20 --merge --ship --ship-as deepcache-20
if $PY -c "import DeepCache" 2>/dev/null; then
  step 17 crosscheck-deepcache $PY -m benchmarks.crosscheck_deepcache --prompts 6 --rounds 3 --settings 3:0,5:0 --json docs/results/crosscheck_deepcache.json
fi
echo "reship done" >&2
