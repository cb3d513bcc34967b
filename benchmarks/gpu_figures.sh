#!/usr/bin/env bash
# The GPU figures in one call, for a lent GPU machine with torch but no dlib (shards made elsewhere):
# environment, trainer step efficiency (ResNet-50, 112 px, bf16), descriptor speed on CUDA, and every
# ablation row's training speed at the full budget. Each part has its own time limit, so one that breaks
# or hangs leaves the others' figures; every output lands in OUT.
#     benchmarks/gpu_figures.sh SHARDS OUT [STEPS_PER_ROW [BUDGET]]
set -u
shards=$1 out=$2 steps=${3:-40} budget=${4:-full}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
scratch=$(mktemp -d)  # checkpoints of the row runs stay out of OUT

{ date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $py -c "import sys, torch, torchvision, numpy, h5py, cv2
print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__,
      'numpy', numpy.__version__, 'h5py', h5py.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/env.txt"
timeout 150 $py benchmarks/bench_trainer.py --raw "$shards" --jpeg "$shards" --only step --cuda-only 2>&1 \
  | tee "$out/trainer_step.txt"
timeout 90 $py benchmarks/bench_descriptors.py --shards "$shards" --devices cuda 2>&1 | tee "$out/descriptors.txt"
timeout 300 $py benchmarks/bench_rows.py --shards "$shards" --budget "$budget" --steps "$steps" --log-every 5 --out "$scratch/rows" 2>&1 \
  | tee "$out/rows.txt"
cp "$scratch/rows/bench_rows.json" "$out/" 2>/dev/null
tar -czf "$out/row_logs.tgz" -C "$scratch/rows" logs $(cd "$scratch/rows" && ls runs/*/metrics.jsonl 2>/dev/null)
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv | tee -a "$out/env.txt"
rm -rf "$scratch"
