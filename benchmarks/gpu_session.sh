#!/usr/bin/env bash
# Everything issue 6 measures on a GPU, in one command on a lent GPU machine:
#   bash benchmarks/gpu_session.sh [OUT_DIR]        (default: benchmarks/results/gpu)
# 1. the GPU tests (nvJPEG lanes on CUDA, FAISS on the GPU when faiss-gpu is installed);
# 2. ViT-B-32 throughput end to end from 640x480 JPEG files, our pipeline and the naive
#    loop in the same run with the defaults, then one setting at a time (no naive loop).
# Needs the project's dependencies importable by `python3` (the device README says how to
# carry wheels; faiss-gpu-cu12 is optional and only for step 1's FAISS test).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
WORK=${SHOPSEARCH_BENCH_WORK:-/tmp/shopsearch-gpu-jpegs}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$OUT/gpu.txt"; nproc | tee -a "$OUT/gpu.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_index_gpu.py tests/test_gpu_lanes.py \
    "tests/test_indexer_pipeline.py::test_gpu_batch_loop_matches_cpu_path" > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"

bench() {  # NAME ENV... -- ARGS...
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    timeout "${BENCH_TIMEOUT:-170}" env "${envs[@]}" python3 benchmarks/throughput_bench.py --model openclip:ViT-B-32 --device cuda \
        --source synthetic --size 640x480 --images 8192 --repeats 3 --work-dir "$WORK" \
        --out "$OUT/throughput_vit-b-32_cuda_$name.json" --note "gpu_session.sh $name" "$@" 2>&1 | tail -1
}
# the defaults (CPU lane with cores-4 processes beside nvJPEG) and the naive loop in the same
# run, then one setting changed at a time (no naive loop)
BENCH_TIMEOUT=240 bench default --
bench no_graphs SHOPSEARCH_CUDA_GRAPHS=0 -- --no-naive
bench nvjpeg_only SHOPSEARCH_GPU_CPU_DECODERS=0 -- --no-naive
bench cpu9 SHOPSEARCH_GPU_CPU_DECODERS=9 -- --no-naive
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("throughput_*.json")):
    r = json.loads(p.read_text())
    print(f"{p.stem:45} {r['images_per_s']:>9.1f} img/s  naive {r.get('naive_images_per_s')}  stages {r.get('gpu_stages_s')}")
EOF
