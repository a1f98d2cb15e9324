# Included before find_package(Torch) by smoothing_ext's CMakeLists.txt and by its installed package
# config (so that downstream projects get it too).
#
# A CUDA build of torch (pip's default torch is one) makes torch's own CMake config look the CUDA
# toolkit up and enable the CUDA language, even for CPU-only code. Two things then go wrong without
# help on machines like CI's (no GPU, a wrapper script named nvcc on PATH):
#  * the legacy FindCUDA it uses guesses the toolkit root from `nvcc` on PATH: point it at CUDA_HOME
#    (else /usr/local/cuda), as torch's Python build helper needs too;
#  * without TORCH_CUDA_ARCH_LIST it compiles and runs a GPU-detection program, which fails with no
#    GPU: default to the release list (nothing is compiled for it unless CUDA sources are built).
# Everything here only sets what is not already set.
if(NOT CUDA_TOOLKIT_ROOT_DIR)
  if(DEFINED ENV{CUDA_HOME} AND EXISTS "$ENV{CUDA_HOME}/bin/nvcc")
    set(CUDA_TOOLKIT_ROOT_DIR "$ENV{CUDA_HOME}")
  elseif(DEFINED ENV{CUDA_PATH} AND EXISTS "$ENV{CUDA_PATH}/bin/nvcc")
    set(CUDA_TOOLKIT_ROOT_DIR "$ENV{CUDA_PATH}")
  elseif(EXISTS "/usr/local/cuda/bin/nvcc")
    set(CUDA_TOOLKIT_ROOT_DIR "/usr/local/cuda")
  endif()
endif()
if(CUDA_TOOLKIT_ROOT_DIR AND NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
endif()
if(NOT TORCH_CUDA_ARCH_LIST AND DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "$ENV{TORCH_CUDA_ARCH_LIST}")
endif()
if(NOT TORCH_CUDA_ARCH_LIST)
  # Same default as setup.py without a visible GPU (the release list; see docs/install.md).
  set(TORCH_CUDA_ARCH_LIST "8.0;8.6;8.9;9.0;10.0;12.0+PTX")
endif()
# (torch's config turns TORCH_CUDA_ARCH_LIST into -gencode flags and sets CMAKE_CUDA_ARCHITECTURES
# to OFF, warning if it was set: leave CMAKE_CUDA_ARCHITECTURES alone.)
