#!/usr/bin/env bash
# Issue 18's CPU points on an idle 2-core Intel Xeon with AMX + AVX512-BF16, in one run (ratios from one session).
# Takes about 10-11 minutes idle (at most 12; estimated from its parts, timed whole only under load) when DATA
# already holds the Grocery demo; building the demo (Lite0, flat index, 2,721 vectors, then its calibration
# photos) adds an estimated 3-5 minutes idle (46 minutes wall, 9 CPU-minutes at load average 14-20): build it
# first (the first lines below, or any earlier DATA) to stay within 12 minutes.
#   1. EfficientNet-Lite0 end to end (Grocery JPEGs to saved vectors): what `index build` picks (--precision
#      auto, tuned batch) with the naive loop; bf16 at batch 8 and 32 (2 decode threads) and at 16 with one
#      decode thread ("best": the fastest of the four); CPU ms per photo by stage on one thread
#      (lite0_cpu_profile.py); ViT-B-32 (random weights) fp32 vs bf16 end to end, in turns (bf16_bench.py)
#   2. queries: stage CPU times in process on one torch thread (query_profile.py), then HTTP through gunicorn,
#      sequential and 4 clients, in turns: BASE (the code before, if given) and this checkout at 1x4, 2x2 and
#      2x1 (load_ab.py)
# Results go to benchmarks/results/*_xeon_amx_idle.json (SUFFIX), then make_results.py rewrites RESULTS.md.
#
# Run from the repository root on the idle machine:
#   bash benchmarks/speed_idle_xeon.sh
#   BASE=/tmp/speed-base bash benchmarks/speed_idle_xeon.sh     # also the code before (git worktree/archive of main)
# A short end-to-end check: SPEED_QUICK=1 SUFFIX=_xeon_amx_loaded_quick ... (64 photos, 3 s phases, one round:
# 14 minutes at load average 10-20 with the demo built; a few minutes idle)
#   DATA: demo data dir (default /tmp/speeddemo; built here if it has no index)
#   PORT: port the servers listen on in turn (default 5150)
#   STEPS: any of throughput vit queries (default: all three, in that order)
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=${DATA:-/tmp/speeddemo}
SUFFIX=${SUFFIX:-_xeon_amx_idle}
PORT=${PORT:-5150}
BASE=${BASE:-}
STEPS=" ${STEPS:-throughput vit queries} "
export SHOPSEARCH_GROCERY_DIR=${SHOPSEARCH_GROCERY_DIR:-../shared/datasets/grocerystore}
export HF_HUB_OFFLINE=1
R=benchmarks/results
if [ "${SPEED_QUICK:-0}" = 1 ]; then
  LITE=64; VIT=16; ROUNDS=1; DUR=3; QUERIES=6
else
  LITE=1024; VIT=256; ROUNDS=2; DUR=15; QUERIES=32
fi
t_start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t_start )) s] $* | $(uptime)"; }
stamp start

# -- the demo data dir ------------------------------------------------------------------------------
if ! ls "$DATA"/index/CURRENT >/dev/null 2>&1; then
  stamp "building the Grocery demo in $DATA"
  $PY -c "from indexer.cli import main; main()" --data-dir "$DATA" demo --dataset "$SHOPSEARCH_GROCERY_DIR" \
      --model efficientnet-lite0 --no-serve > /dev/null
fi

# -- point 1: throughput ----------------------------------------------------------------------------
if [[ $STEPS == *" throughput "* ]]; then
stamp "Lite0: precision auto (as index build), with the naive loop"
$PY benchmarks/throughput_bench.py --model efficientnet-lite0 --images $LITE --precision auto \
    --out $R/throughput_efficientnet-lite0_cpu_default$SUFFIX.json --note "speed_idle_xeon.sh: defaults" > /dev/null
for v in 8:2 32:2 16:1; do  # batch:decode threads (the tuned default is 16:2)
  bs=${v%:*}; w=${v#*:}
  stamp "Lite0: bf16, batch $bs, $w decode threads"
  $PY benchmarks/throughput_bench.py --model efficientnet-lite0 --images $LITE --precision bf16 --batch-size $bs \
      --workers $w --no-naive --out $R/throughput_efficientnet-lite0_cpu_bf16_b${bs}_w$w$SUFFIX.json \
      --note "speed_idle_xeon.sh: bf16, batch $bs, $w decode threads" > /dev/null
done
stamp "Lite0: CPU ms per photo by stage, one thread"
$PY benchmarks/lite0_cpu_profile.py --rounds $ROUNDS --out $R/lite0_cpu_profile$SUFFIX.json > /dev/null
fi
if [[ $STEPS == *" vit "* ]]; then
stamp "ViT-B-32 (random weights): fp32 vs bf16 end to end"
$PY benchmarks/bf16_bench.py --model openclip:ViT-B-32 --images $VIT --rounds $ROUNDS --no-autocast \
    --note "speed_idle_xeon.sh" --out $R/bf16_openclip-ViT-B-32$SUFFIX.json > /dev/null
fi

# -- point 2: queries -------------------------------------------------------------------------------
if [[ $STEPS == *" queries "* ]]; then
stamp "query profile (in process)"
OMP_NUM_THREADS=1 $PY benchmarks/query_profile.py --data-dir "$DATA" --queries $QUERIES --out $R/query_profile$SUFFIX.json \
    > /dev/null 2>&1
VARIANTS=()
[ -n "$BASE" ] && VARIANTS+=(--variant "before=$BASE:1x4")
VARIANTS+=(--variant after=.:1x4 --variant after-2x2=.:2x2 --variant after-2x1=.:2x1:1)
stamp "HTTP load: ${VARIANTS[*]}"
$PY benchmarks/load_ab.py --data-dir "$DATA" --rounds $ROUNDS --duration $DUR --sequential $DUR --port "$PORT" \
    "${VARIANTS[@]}" --out $R/load_search_ab$SUFFIX.json > /dev/null
fi

$PY benchmarks/summarise_speed.py --suffix "$SUFFIX"
$PY benchmarks/make_results.py > /dev/null
stamp done
