#!/usr/bin/env bash
# Issue 18, points 1-2, on an idle CPU with AVX512-BF16 (the 2-core AMD EPYC): every ratio
# measured in one run. About 10 minutes on an idle 2-core machine (clip: ~7, throughput: ~2).
#   STEPS: any of throughput clip int8 (default: throughput clip; int8 first calibrates
#          Lite0 on Grocery train photos into $DATA, a few more minutes)
#   CR_VENV: clip-retrieval's venv, made on first use (~6 GB): default /work/cr-venv
#   TAG: the machine-state part of the result names (default idle)
# Run from the repository root:  bash benchmarks/speed_rerun_epyc_bf16.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
export SHOPSEARCH_GROCERY_DIR=${SHOPSEARCH_GROCERY_DIR:-../shared/datasets/grocerystore}
export HF_HUB_OFFLINE=1
CR_VENV=${CR_VENV:-/work/cr-venv}
DATA=${DATA:-/tmp/speed-epyc-bf16}
TAG=${TAG:-idle}
STEPS=${STEPS:-throughput clip}
R=benchmarks/results
NOTE="$TAG run of benchmarks/speed_rerun_epyc_bf16.sh"
uptime

for step in $STEPS; do case $step in
throughput)  # fp32 against bf16 (weights converted once), JPEG files to a vector cache, interleaved
  $PY benchmarks/bf16_bench.py --model openclip:ViT-B-32 --images 256 --rounds 2 --no-autocast \
      --note "$NOTE" --out $R/bf16_openclip-ViT-B-32_epyc_bf16_$TAG.json
  $PY benchmarks/bf16_bench.py --model efficientnet-lite0 --images 512 --rounds 2 --no-autocast \
      --note "$NOTE" --out $R/bf16_efficientnet-lite0_epyc_bf16_$TAG.json ;;
int8)  # Lite0 fp32 / bf16 / int8 (VNNI) once a calibration exists
  [ -f "$DATA/models/efficientnet-lite0.int8.pt" ] || $PY -c "from indexer.cli import main; main()" \
      --data-dir "$DATA" model quantize --model efficientnet-lite0 --from "$SHOPSEARCH_GROCERY_DIR/dataset/train"
  SHOPSEARCH_DATA_DIR="$DATA" $PY benchmarks/bf16_bench.py --model efficientnet-lite0 --images 512 --rounds 2 \
      --no-autocast --int8 --note "$NOTE" --out $R/bf16_int8_efficientnet-lite0_epyc_bf16_$TAG.json ;;
clip)  # 1,000 photos, 2 rounds, alternating: clip-retrieval, our default (precision auto), +fp32, +bf16
  $PY benchmarks/clip_retrieval_bench.py --images 1000 --rounds 2 --venv "$CR_VENV" --note "$NOTE" \
      --out $R/clip_retrieval_vs_shopsearch_epyc_bf16_$TAG.json ;;
*) echo "unknown step $step" >&2; exit 2 ;;
esac; uptime; done
$PY benchmarks/make_results.py
