#!/usr/bin/env bash
# Build and install the torch extension (package vecfusion_ops) into the given Python's environment.
# With the nvcc wheels of requirements-torch.txt (site-packages/nvidia/cu13), the CUDA kernels are
# compiled too, GPU or not; set CUDA_HOME to use another toolkit, VECFUSION_NO_CUDA=1 for CPU only.
set -euo pipefail
PY=$(command -v "${1:-python3}" || true); PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
cd "$(dirname "$0")"
export PATH="$(dirname "$PY"):$PATH"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
WHEEL_CUDA="$SITE/nvidia/cu13"
if [[ -z "${CUDA_HOME:-}" && -x "$WHEEL_CUDA/bin/nvcc" && "${VECFUSION_NO_CUDA:-0}" != 1 ]]; then
    export CUDA_HOME="$WHEEL_CUDA"
    # the runtime wheel ships only libcudart.so.13; the linker wants libcudart.so
    if [[ ! -e "$CUDA_HOME/lib/libcudart.so" && -e "$CUDA_HOME/lib/libcudart.so.13" ]]; then
        ln -s libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
    fi
    export CPATH="$CUDA_HOME/include:$CUDA_HOME/include/cccl${CPATH:+:$CPATH}"
    export PATH="$CUDA_HOME/bin:$PATH"
fi
# Two architectures keep a clean build short on a small CI box; override for other GPUs.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
echo "building vecfusion_ops (CUDA_HOME=${CUDA_HOME:-none}, arch ${TORCH_CUDA_ARCH_LIST})"
start=$(date +%s)
"$PY" -m pip install --quiet --no-build-isolation --no-deps .
rm -rf build vecfusion_ops.egg-info
echo "vecfusion_ops built in $(( $(date +%s) - start )) s"
