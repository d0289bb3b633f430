#!/usr/bin/env bash
# Everything measured on a lent GPU machine, in one command:
#   bash benchmarks/gpu_session.sh [OUT_DIR]        (default: benchmarks/results/gpu)
# 0. set-up: wheels from .whl/ (open_clip_torch and its needs, sqlalchemy, faiss-gpu-cu12 with
#    CUDA 12's runtime) into /tmp/site; where the machine has only CUDA 13's cuBLAS, the shim
#    in benchmarks/gpu/ (built beside the wheels) stands in for libcublas.so.12;
# 1. the GPU tests (nvJPEG lanes on CUDA, FAISS on the GPU);
# 2. ViT-B-32 throughput end to end from 640x480 JPEG files with the defaults, then one
#    setting changed (no naive loop: earlier sessions measured it, and device time is short);
# 3. FAISS search on the GPU against the CPU at 1M vectors (benchmarks/faiss_gpu_bench.py).
# Each step has its own time limit, and one failing does not stop the others.
# Preparing .whl/ here (git-ignored; it travels with `carry`, 64 MiB in all with the tree):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl open_clip_torch ftfy wcwidth sqlalchemy greenlet     # throughput and tests
#   faiss-gpu-cu12==1.8.0.2 (the last with Hopper kernels) and numpy==1.26.4 likewise; the faiss
#   wheel is too big as it is: unpack it and `tar cJf .whl/faiss18.tar.xz faiss faiss_gpu_cu12.libs`;
#   mkdir .whl/shim; libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel into it, and
#   gcc -shared -fPIC -o .whl/shim/libcublas.so.12 -Wl,-soname,libcublas.so.12 \
#       -Wl,--version-script=benchmarks/gpu/cublas12.map benchmarks/gpu/cublas12_shim.c -ldl
#   (plus an empty libcublasLt.so.12 with that soname). Run with carry [".whl"].
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
WORK=${SHOPSEARCH_BENCH_WORK:-/tmp/shopsearch-gpu-jpegs}
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl 2>&1 | grep -v "^WARNING" | tail -3
    # a wheel too big to travel as it is comes repacked as .tar.xz (its installed files)
    for t in .whl/*.tar.xz; do [ -e "$t" ] && tar xJf "$t" -C /tmp/site; done
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    LIBS=/tmp/site/nvidia/cuda_runtime/lib  # CUDA 12's runtime (or a bare libcudart.so.12 in .whl/shim)
    if ! ldconfig -p | grep -q "libcublas.so.12"; then
        C13=$(find /opt /usr/local /usr/lib -name "libcublas.so.13*" 2>/dev/null | head -1)
        [ -n "$C13" ] && LIBS=$LIBS:$PWD/.whl/shim:$(dirname "$C13")
        echo "cuBLAS 12 shim over $C13" | tee "$OUT/faiss_gpu_setup.txt"
        # faiss 1.8's preload list cannot be switched off (its check lacks a `continue`): empty it
        [ -e /tmp/site/faiss/PRELOAD_SHARED_LIBRARIES.json ] && echo "[]" > /tmp/site/faiss/PRELOAD_SHARED_LIBRARIES.json
    fi
    # faiss's own preload looks the CUDA 12 libraries up as pip packages; the loader finds them instead
    export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} _FAISS_WHEEL_DISABLE_CUDA_PRELOAD=1
fi
python3 -c "import shopsearch.migrations" 2>/dev/null \
    || python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . 2>&1 | grep -v "^WARNING" | tail -2
stamp "set-up done"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$OUT/gpu.txt"; nproc | tee -a "$OUT/gpu.txt"
if ! python3 -c "import faiss, torch; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus(), 'torch', torch.__version__)" \
    >> "$OUT/gpu.txt" 2>&1; then  # the shim failed: carry on without faiss-gpu (the throughput needs no faiss)
    echo "faiss-gpu does not load; removed" | tee -a "$OUT/gpu.txt"; rm -rf /tmp/site/faiss
fi
tail -2 "$OUT/gpu.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_index_gpu.py tests/test_gpu_lanes.py \
    "tests/test_indexer_pipeline.py::test_gpu_batch_loop_matches_cpu_path" > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"; stamp "tests done"

bench() {  # NAME ENV... -- ARGS...
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    timeout "${BENCH_TIMEOUT:-100}" env "${envs[@]}" python3 benchmarks/throughput_bench.py --model openclip:ViT-B-32 --device cuda \
        --source synthetic --size 640x480 --images 8192 --repeats 3 --work-dir "$WORK" \
        --out "$OUT/throughput_vit-b-32_cuda_$name.json" --note "gpu_session.sh $name" "$@" 2>&1 | tail -1
    stamp "bench $name done"
}
[ "${GPU_THROUGHPUT:-1}" = 1 ] && BENCH_TIMEOUT=150 bench default -- --no-naive
timeout 180 python3 benchmarks/faiss_gpu_bench.py --n 1000000 --queries 10000 --types flat,ivfflat --out "$OUT/faiss_gpu_1m.json" 2>&1 \
    | grep -v "^WARNING" | tail -6
stamp "faiss done"
[ "${GPU_VARIANTS:-1}" = 1 ] && bench cpu14 SHOPSEARCH_GPU_CPU_DECODERS=14 -- --no-naive
python3 - "$OUT" <<'EOF'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("throughput_*.json")):
    r = json.loads(p.read_text())
    print(f"{p.stem:45} {r['images_per_s']:>9.1f} img/s  naive {r.get('naive_images_per_s')}  stages {r.get('gpu_stages_s')}")
EOF
stamp "end"
