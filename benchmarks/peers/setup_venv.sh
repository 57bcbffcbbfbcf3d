#!/usr/bin/env bash
# Build the virtual environment for the peer engines that cannot share edgeinfer's environment:
# optimum-onnx pins transformers < 4.58 while the main environment has transformers 5.
# torch is pinned to the CPU wheel already on disk (any other pin would pull GBs of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=build/bench/venv-peers
python -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "transformers>=4.45,<4.58" optimum-onnx onnxruntime ctranslate2 onnxruntime-genai
"$VENV/bin/python" -c "import ctranslate2, onnxruntime_genai, optimum.onnxruntime, torch, transformers; print('venv ready:', \
'torch', torch.__version__, 'transformers', transformers.__version__, 'ctranslate2', ctranslate2.__version__)"
