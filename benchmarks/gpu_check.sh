#!/usr/bin/env bash
# The GPU checks of issue 15 as one prepared run. Each step has its own time limit, so a failure or a hang in one
# still leaves the others' results: versions 60 s, GPU tests 180 s, kernel table 150 s (the part "kernels", 6.5
# minutes at most), then 04 on lego 480 s (the part "train": 5 minutes of training and the 200 test views).
# A device command of this workplace may run 10 minutes: run the two parts as two commands. From the repository
# root, on a machine with an NVIDIA GPU, PyTorch with CUDA and CuPy:
#
#     OUT=runs/gpu_check bash benchmarks/gpu_check.sh kernels
#     OUT=runs/gpu_check LEGO=data/nerf_synthetic/lego bash benchmarks/gpu_check.sh train
#     (no argument: both, one after the other)
#
# LEGO is a Blender lego folder with at least transforms_train.json, transforms_test.json, train/ and test/
# (about 38 MB at 400x400). Everything is written under $OUT: versions.txt, pytest-gpu.txt, kernels.json (+ the
# printed table), train-04_hashnerf-lego.{json,csv,png} (held-out PSNR at 30 s, 1, 2 and 5 minutes of the paper
# preset, then all 200 test views), and summary.txt with each step's exit status. Copy the results worth keeping
# to benchmarks/results/ with the device in their names (benchmarks/machine.py names it in each JSON).
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
LEGO=${LEGO:-data/nerf_synthetic/lego}
PY=${PYTHON:-python3}
PART=${1:-all}
mkdir -p "$OUT"
export NERF_KERNEL_CACHE="$OUT/kernel-cache" MPLBACKEND=Agg
summary="$OUT/summary.txt"
: >> "$summary"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.txt, record the exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local status=$?
  echo "$name: exit $status in $((SECONDS - start)) s (limit $limit s)" | tee -a "$summary"
}

if [ "$PART" = all ] || [ "$PART" = kernels ]; then
  step versions 60 bash -c "nvidia-smi; $PY -c 'import torch, cupy; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.get_device_name(0)); print(\"cupy\", cupy.__version__)'; $PY -m pip list 2>/dev/null | grep -i -E 'imageio|scikit-image|tqdm|matplotlib|pytest'"
  # CuPy against the twins, forward and backward, every kernel (large, non-contiguous and empty inputs included).
  step pytest-gpu 180 "$PY" -m pytest -q -rs -m gpu tests/kernels -p no:cacheprovider  # -rs: why any skipped
  # The kernel table: cuda against torch, realistic sizes, median after warm-up with synchronisation.
  step bench_kernels 150 "$PY" benchmarks/bench_kernels.py --out "$OUT/kernels.json"
fi
if [ "$PART" = all ] || [ "$PART" = train ]; then
  # lego 400x400, the paper preset (adaptive batch of 2^18 samples, step schedule, App. E.2 grid), 5 minutes.
  if [ -f "$LEGO/transforms_train.json" ]; then
    step train-04 480 "$PY" benchmarks/train_to_psnr.py 04_hashnerf.py --scene lego --time_budget_s 300 \
      --eval_every 500 --checkpoints_min 0.5,1,2,5 --targets_db 30,33,35 --run_dir "$OUT/run-04" \
      --out "$OUT/train-04_hashnerf-lego" -- --datadir "$LEGO" --iters 1000000 --n_test_views 200 --video_frames 0
  else
    echo "train-04: skipped, no lego at $LEGO (set LEGO=...)" | tee -a "$summary"
  fi
fi
cat "$summary"
