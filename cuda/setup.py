"""Build the vecfusion torch extension (package ``vecfusion_ops``, module ``vecfusion_ops._C``).

CUDA sources are compiled whenever a CUDA toolkit is found: CUDA_HOME (or nvcc on PATH,
as torch.utils.cpp_extension finds it) or FORCE_CUDA=1. Whether a GPU is present does not
matter, so a machine without one still compiles and ships the CUDA kernels.

    CUDA_HOME=/path/to/cuda TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install --no-build-isolation ./cuda
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))

# ATen's `at::parallel_for` is a header template: compiled without OpenMP it runs every range on
# the calling thread (torch's own kernels are parallel, ours would not be). torch's Linux wheels
# use GNU OpenMP (torch/lib/libgomp.so.1); linking with -fopenmp records the same soname, so the
# extension shares torch's thread pool and `torch.set_num_threads` governs both.
OPENMP_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []


def _with_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("VECFUSION_NO_CUDA", "0") == "1":
        return False
    return CUDA_HOME is not None


def _extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cxx = ["-O3", "-fdiagnostics-color=never", *OPENMP_FLAGS]
    if _with_cuda():
        cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        return CUDAExtension(
            "vecfusion_ops._C",
            cpp + cu,
            define_macros=[("VECFUSION_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=OPENMP_FLAGS,
        )
    return CppExtension("vecfusion_ops._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=OPENMP_FLAGS)


os.chdir(HERE)
setup(
    name="vecfusion-ops",
    version="0.1.0",
    description="torch ops of vecfusion: embedding gather/backward kernels (CPU and CUDA)",
    packages=["vecfusion_ops"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
)
