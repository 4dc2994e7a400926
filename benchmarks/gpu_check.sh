#!/usr/bin/env bash
# The GPU checks of issue 15 as one prepared run. Each step has its own time limit, so a failure or a hang in one
# still leaves the others' results: versions 60 s, GPU tests 180 s, kernel table 150 s (the part "kernels", 6.5
# minutes at most), then 04 on lego 480 s (the part "train": 5 minutes of training and the 200 test views).
# A device command of this workplace may run 10 minutes: run the two parts as two commands. From the repository
# root, on a machine with an NVIDIA GPU, PyTorch with CUDA and CuPy:
#
#     OUT=runs/gpu_check bash benchmarks/gpu_check.sh kernels
#     OUT=runs/gpu_check LEGO=data/nerf_synthetic/lego bash benchmarks/gpu_check.sh train
#     OUT=runs/gpu_check LEGO=data/nerf_synthetic/lego bash benchmarks/gpu_check.sh oom
#     (no argument: all three, one after the other)
#
# LEGO is a Blender lego folder with at least transforms_train.json, transforms_test.json, train/ and test/
# (about 38 MB at 400x400). Everything is written under $OUT: versions.txt, pytest-gpu.txt, kernels.json (+ the
# printed table), train-04_hashnerf-lego.{json,csv,png} (held-out PSNR at 30 s, 1, 2 and 5 minutes of the paper
# preset, then all 200 test views), oom-04.txt and oom-04-resume.txt (the part "oom", 6 minutes at most: 04
# on lego started with a batch no GPU holds, 2^22 rays and 2^28 samples per step, and a render chunk of 2^22
# rays, a whole 400x400 view of 160000 rays in one piece, which may fit; each CUDA out-of-memory error halves
# them and says so in a "warning: GPU out of memory" line; 60 s of training and 10 test views follow, then a
# --resume of 100 more steps must go on with the halved batch without a new error in training;
# oom-04-warnings.txt collects the warning lines of both), and summary.txt with each step's exit status. Copy
# the results worth keeping
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
if [ "$PART" = all ] || [ "$PART" = oom ]; then
  # Runs that survive running out of memory (issue 25): the recovery on a real GPU.
  if [ -f "$LEGO/transforms_train.json" ]; then
    oom_args=(--scene lego --datadir "$LEGO" --outdir "$OUT/run-04-oom" --video_frames 0 --n_test_views 10)
    step oom-04 240 "$PY" 04_hashnerf.py "${oom_args[@]}" --batch_rays 4194304 --samples_per_batch 268435456 \
      --chunk 4194304 --time_budget_s 60 --iters 1000000
    step oom-04-resume 120 "$PY" 04_hashnerf.py "${oom_args[@]}" --resume --time_budget_s 0 --iters \
      "$(( $(ls "$OUT/run-04-oom"/ckpt_*.pt 2>/dev/null | sed 's/.*ckpt_0*\([0-9]*\)\.pt/\1/' | sort -n | tail -1) + 100 ))"
    grep -h -o "warning: GPU out of memory.*" "$OUT/oom-04.txt" "$OUT/oom-04-resume.txt" > "$OUT/oom-04-warnings.txt"
    echo "oom-04: $(grep -c "rays per step" "$OUT/oom-04.txt") halvings in training, $(grep -c "rays per step" \
      "$OUT/oom-04-resume.txt") after --resume (expected 0); config: $(grep -E '"(batch_rays|samples_per_batch)"' \
      "$OUT/run-04-oom/config.json" | tr -d ' \n')" | tee -a "$summary"
  else
    echo "oom-04: skipped, no lego at $LEGO (set LEGO=...)" | tee -a "$summary"
  fi
fi
cat "$summary"
