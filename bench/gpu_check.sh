#!/usr/bin/env bash
# The GPU check, one command, no network (run on the GPU machine from the repository root, .whl/ carried beside it
# by bench/fetch_wheels.sh):
#   bash bench/gpu_check.sh [OUTPUT_DIR] [--smoke] [--steps N]
# Installs the carried wheels into /tmp/site, then runs `lmforge bench --suite gpu` (see src/lmforge/bench/
# gpu_suite.py): a Qwen2-0.5B-shaped model from a config; SFT MFU and memory on packed 4k rows, chunked vs model vs
# Liger loss, packed vs unpacked loss, serving throughput at 1/8/32 requests, FSDP2 and DeepSpeed run + resume,
# a tiny Qwen2-VL (ids vs its processor for images and a video, LoRA SFT, a served image answer), GRPO and online
# DPO with the verifiable rewards (reasoning_rl).
# Writes OUTPUT_DIR/gpu_check.json and gpu_check.md (default: $OUT/gpu_check when the device tool sets $OUT);
# exits 1 when a check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
output=${OUT:-.}/gpu_check
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then output=$1; shift; fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export LMFORGE_CACHE=${LMFORGE_CACHE:-/tmp/lmforge-cache} TOKENIZERS_PARALLELISM=false
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m lmforge bench --suite gpu --output "$output" "$@"
