#!/usr/bin/env bash
# GPU check of the real-size RECLF pretraining step (benchmarks/gpu_check.py): fp32 / AMP fp16 +
# GradScaler / bf16, channels_last, the largest all-pairs batch that fits, and DDP throughput over
# every visible GPU (the script re-launches itself under torchrun --standalone).
#   bash benchmarks/gpu_check.sh [--batch 32] [--steps 5] [--out FILE]     # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry_run --out /tmp/gpu_check.json      # anywhere, tiny sizes
# Run from anywhere; it cds to the repository root. Results: benchmarks/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# NCCL: quiet unless it fails; set NCCL_DEBUG=INFO to see the transport it chose
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
exec python -m benchmarks.gpu_check "$@"
