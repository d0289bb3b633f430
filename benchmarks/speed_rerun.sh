#!/usr/bin/env bash
# The speed figures of issue 18, for an idle machine: every ratio measured in one run.
#   BASE: a checkout of the code before the change (git archive <commit> | tar -x -C $BASE)
#   DATA: a Grocery demo data dir (made here once if it has no index)
#   STEPS: any of demo queries throughput clip (default: all, in that order)
# Run from the repository root:  BASE=/tmp/speed-base bash benchmarks/speed_rerun.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
BASE=${BASE:?set BASE to a checkout of the code before the change}
DATA=${DATA:-/tmp/speeddemo}
export SHOPSEARCH_GROCERY_DIR=${SHOPSEARCH_GROCERY_DIR:-../shared/datasets/grocerystore}
export HF_HUB_OFFLINE=1
STEPS=${STEPS:-demo queries throughput clip}
R=benchmarks/results
uptime

for step in $STEPS; do case $step in
demo)  # Lite0, flat, 2,721 vectors, category head (about 1 minute idle once the vectors are cached)
  $PY -c "from indexer.cli import main; main()" --data-dir "$DATA" demo --dataset "$SHOPSEARCH_GROCERY_DIR" \
      --model efficientnet-lite0 --no-serve ;;
queries)  # query model check (all Grocery test photos), stage CPU times, then HTTP through gunicorn + nginx:
  # before (BASE, its default 1x4) and after (1x4, 2x2) in turns, 2 rounds (~8 minutes idle)
  $PY benchmarks/query_model_check.py --data-dir "$DATA" --out $R/query_model_check_epyc_bf16_idle.json > /dev/null
  $PY benchmarks/query_profile.py --data-dir "$DATA" --out $R/query_profile_epyc_bf16_idle.json > /dev/null
  $PY benchmarks/load_ab.py --data-dir "$DATA" --rounds 2 --duration 15 --sequential 15 \
      --variant before=$BASE:1x4 --variant after=.:1x4 --variant after-2x2=.:2x2 \
      --out $R/load_search_ab_epyc_bf16_idle.json ;;
throughput)  # Lite0 end to end: fp32 eager (folded) and the naive loop; compiled; precision auto (int8 if quantized)
  $PY benchmarks/throughput_bench.py --model efficientnet-lite0 --images 1024 --compile off --precision fp32 \
      --out $R/throughput_efficientnet-lite0_cpu_epyc_fold.json --note "idle rerun: fp32 eager, batch norms folded"
  $PY $BASE/benchmarks/throughput_bench.py --model efficientnet-lite0 --images 1024 --compile off --precision fp32 \
      --no-naive --out $R/throughput_efficientnet-lite0_cpu_epyc_nofold.json --note "idle rerun: base checkout, unfolded"
  [ -f "$DATA/models/efficientnet-lite0.int8.pt" ] || $PY -c "from indexer.cli import main; main()" \
      --data-dir "$DATA" model quantize --model efficientnet-lite0 --from "$SHOPSEARCH_GROCERY_DIR/dataset/train"
  SHOPSEARCH_DATA_DIR="$DATA" $PY benchmarks/throughput_bench.py --model efficientnet-lite0 --images 4096 \
      --repeats 2 --precision auto --out $R/throughput_efficientnet-lite0_cpu_epyc_auto.json \
      --note "idle rerun: precision auto with an int8 calibration present" ;;
clip)  # 1,000 photos, 2 rounds, alternating (venv under var/ made on first use: ~6 GB, minutes)
  $PY benchmarks/clip_retrieval_bench.py --images 1000 --rounds 2 --out $R/clip_retrieval_vs_shopsearch_epyc.json ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac; uptime; done
$PY benchmarks/make_results.py
