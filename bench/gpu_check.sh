#!/usr/bin/env bash
# The GPU check of ../shared/gpu-check.md as one script: run on a machine with an NVIDIA GPU
# from the repository root, with the wheels mgvr needs beyond a CUDA image (open_clip_torch,
# ftfy, wcwidth, ffmpeg-python, platformdirs, faiss-cpu or faiss-gpu) in $WHEELS, and ffmpeg
# on PATH (or Debian's packages unpacked with dpkg -x and MGVR_FFMPEG / MGVR_FFPROBE set).
# Every result goes into $OUT (default bench/out/gpu). Budget: under 8 minutes.
#
#   WHEELS=wheels OUT=/tmp/gpu bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} > "$OUT/machine.txt" 2>&1
if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps \
      open_clip_torch ftfy wcwidth ffmpeg-python platformdirs faiss-cpu faiss-gpu 2>>"$OUT/pip.txt"
  "$PY" -m pip install --quiet --no-deps -e . 2>>"$OUT/pip.txt"
fi
# 1. the GPU tests, then the end-to-end ones on cuda
timeout 180 "$PY" -m pytest -q -m gpu tests/test_gpu.py > "$OUT/pytest-gpu.txt" 2>&1
# 2. encode throughput: ViT-B-32, random weights, fp16, the batch size the indexer picks
timeout 150 "$PY" bench/bench_index.py --model ViT-B-32 --pretrained none --device cuda \
    --files 16 --json-out "$OUT/bench_index.json" > "$OUT/bench_index.txt" 2>&1 &
index_pid=$!
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu-util.csv" &
smi_pid=$!
wait $index_pid
kill $smi_pid
# 3. search on the GPU (1M clips take longer to build than the budget allows: 100k here)
timeout 240 "$PY" bench/bench_search.py --device cuda --sizes 100000 --incremental 20 \
    --workdir /tmp/mgvr-gpu-bench --json-out "$OUT/bench_search.json" \
    > "$OUT/bench_search.txt" 2>&1
echo "done: $(ls "$OUT")"
