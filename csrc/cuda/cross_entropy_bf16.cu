// The cross-entropy kernels for bfloat16 inputs (kernel type __nv_bfloat16): every group of xent_launch.h.
// One file per dtype, so that the kernels compile in parallel (see xent_launch.h).
#include "xent_launch_impl.cuh"

SMOOTHING_XENT_INSTANTIATE_INDEX(__nv_bfloat16)
SMOOTHING_XENT_INSTANTIATE_PROB(__nv_bfloat16)
SMOOTHING_XENT_INSTANTIATE_BWD(__nv_bfloat16)
