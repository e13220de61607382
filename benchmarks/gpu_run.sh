#!/usr/bin/env bash
# What ran on the lent GPU machine (H100) for docs/baseline.md and docs/benchmarks.md.
# The text encoder's weights (88 MB) cannot travel there, so its outputs travel instead:
#   dragontune text-cache --out .devcarry/text_cache.safetensors --corpus data/corpus --splits train,val \
#       --prompts <(printf '%s\n' "a slow calm piano melody in C major" "fast energetic drum kit groove at 160 BPM")
# (exact MiniLM float32 outputs; the checkpoints record the MiniLM spec and id as if it had run).
set -euo pipefail
OUT=${OUT:-/tmp/out}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m dragontune data synth --out data/corpus --n 2000 --seed 0
TC=text_cache=.devcarry/text_cache.safetensors
# 1. the baseline recipe, unchanged but for the device (fp32, like the CPU run)
python3 -m dragontune pretrain configs/baseline.yaml device=cuda precision=fp32 threads=0 $TC out_dir=runs/baseline 2>&1 \
  | grep -v "it/s\]" | tail -60
tar czf /tmp/base.tgz runs/baseline/model.safetensors runs/baseline/metrics.jsonl runs/baseline/config.yaml runs/baseline/samples
split -b 15M /tmp/base.tgz $OUT/base.tgz.part-
# 2. benchmarks
python3 benchmarks/bench_model.py --device cuda --out $OUT/bench_model_cuda.md
python3 benchmarks/bench_model.py --device cuda --width 512 --depth 8 --batch 128 --out $OUT/bench_model_cuda_large.md
# 3. the larger config
timeout ${LARGE_TIMEOUT:-600} python3 -m dragontune pretrain configs/gpu_large.yaml $TC 2>&1 | grep -v "it/s\]" | tail -40 || true
tar czf $OUT/large.tgz runs/gpu_large/metrics.jsonl runs/gpu_large/config.yaml runs/gpu_large/samples || true
