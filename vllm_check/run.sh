#!/usr/bin/env bash
# The gateway against real vLLM: two vLLM servers on the tiny checkpoints of
# tiny_model.py, the recording of vLLM's answers for the simulator's fidelity test, the
# tests in test_real_vllm.py and the logits processor's cost. From the repository root:
#
#   VLLM_PYTHON=.vllm-venv/bin/python OUT=/tmp/vllm-check bash vllm_check/run.sh
#
# VLLM_PYTHON is a Python with vLLM, PyTorch, transformers and the gateway's needs
# (setup_cpu.sh makes one for the CPU; on a GPU machine, one with the CUDA build).
# With nvidia-smi present the servers use the GPU, else the CPU.
set -u
PY=${VLLM_PYTHON:-.vllm-venv/bin/python}
OUT=${OUT:-/tmp/vllm-check}
MODELS=${MODELS:-$OUT/models}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export GATEWAY_SECRET_VLLM_WATERMARK=vllm-check-master-key-not-a-real-secret-0123456789
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

if command -v nvidia-smi > /dev/null; then
  nvidia-smi -L
  device=(--attention-backend TRITON_ATTN --gpu-memory-utilization 0.25)
else
  device=()
fi
"$PY" vllm_check/tiny_model.py "$MODELS" || exit 1
stamp "models built"

serve() {  # name port [vllm args...]
  local name=$1 port=$2; shift 2
  "$PY" -m vllm.entrypoints.cli.main serve "$MODELS/$name" --served-model-name "$name" \
    --port "$port" --max-model-len 8192 --max-num-seqs 64 --enforce-eager \
    ${device[@]+"${device[@]}"} "$@" > "$OUT/vllm_$name.log" 2>&1 &
  pids+=($!)
}
serve tiny-chat 8001 --logits-processors gateway.vllm_plugin.processor:GreenListLogitsProcessor
serve tiny-guard 8002
for port in 8001 8002; do
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    if (( $(date +%s) - started > 300 )); then
      stamp "vLLM on port $port is not healthy"; tail -n 30 "$OUT"/vllm_*.log; exit 1
    fi
    sleep 2
  done
done
stamp "both vLLM servers healthy"

export VLLM_CHAT_URL=http://127.0.0.1:8001 VLLM_GUARD_URL=http://127.0.0.1:8002
"$PY" vllm_check/record.py "$VLLM_CHAT_URL" tiny-chat "$OUT/vllm_recorded.json"
"$PY" -m pytest vllm_check/test_real_vllm.py -v -s -p no:cacheprovider \
  -o filterwarnings=default --timeout 120 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}
stamp "tests done (exit $status)"
"$PY" vllm_check/processor_speed.py "$VLLM_CHAT_URL" tiny-chat 2>&1 \
  | tee "$OUT/processor_speed.log"
stamp "done"
exit "$status"
