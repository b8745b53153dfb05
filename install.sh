#!/usr/bin/env bash
# One-step set-up of diffusion-gym into the active Python environment (a venv is recommended).
#
# torch comes first, on purpose: if no torch is installed, pip would resolve our `torch>=2.1`
# requirement to the newest release with several GB of CUDA packages. So:
#   - a torch that is already installed (your GPU build, say) is kept as it is;
#   - otherwise torch==$TORCH_VERSION is installed (2.13.0 by default; on machines that keep a
#     local CPU wheel pip takes that). Set TORCH_INDEX_URL to PyTorch's CPU wheel index to get a
#     CPU-only build on a machine that has no local wheel.
# Then the package itself is installed in editable mode with the test extras.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install.sh: keeping the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
else
    echo "install.sh: installing torch==$TORCH_VERSION"
    "$PYTHON" -m pip install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"$PYTHON" -m pip install -e ".[dev]"
"$PYTHON" -c "import diffusion_gym, torch; print('install.sh: diffusion-gym', diffusion_gym.__version__, 'with torch', torch.__version__)"
