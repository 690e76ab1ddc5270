#!/usr/bin/env bash
# GPU smoke test of the scale path (one H100/H200, under 8 minutes, no internet): a few CW-DPO steps of
#   plain-0.5b               Qwen2.5-0.5B-shaped, one GPU, bf16-mixed, no DeepSpeed (the comparison)
#   zero3-14b                Qwen2.5-14B-shaped, DeepSpeed ZeRO-3 (built under zero.Init), LoRA, gradient checkpointing
#   zero3-0.5b-precomputed   ZeRO-3 with the reference log-probs precomputed at fit start (no reference forward)
# Each case runs in its own process with its own time limit and always prints one line:
#   RESULT <case> status=ok peak_mem_gib=... step_s=... tokens_per_s=... build_s=... export_tensors=...
#
# Usage, from the repository root:  bash benchmarks/gpu_smoke.sh [extra gpu_smoke.py args, e.g. --steps 6]
# Needs torch with CUDA, lightning, transformers, peft and deepspeed. Where deepspeed (or newer transformers/peft)
# is missing, put wheels (and optionally deepspeed.tgz: the installed deepspeed package + its dist-info) in
# $CWPO_WHEELS (default .whl-policy); they are installed into /tmp/cwpo-site first.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
WHEELS=${CWPO_WHEELS:-.whl-policy}
if [ -d "$WHEELS" ]; then
  SITE=/tmp/cwpo-site
  mkdir -p "$SITE"
  ls "$WHEELS"/*.whl >/dev/null 2>&1 && \
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  [ -f "$WHEELS/deepspeed.tgz" ] && tar xzf "$WHEELS/deepspeed.tgz" -C "$SITE"
  export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, lightning, transformers, peft, deepspeed; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1

run_case() {  # name, time limit in seconds
  timeout -k 10 "$2" $PY benchmarks/gpu_smoke.py --case "$1" "${@:3}"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "RESULT $1 status=failed error='timed out after $2 s'"; fi
}
START=$(date +%s)
run_case plain-0.5b 100 "$@"
run_case zero3-14b 270 "$@"
run_case zero3-0.5b-precomputed 100 "$@"
echo "gpu_smoke total_s=$(( $(date +%s) - START ))"
