// The cross-entropy kernels for float16 inputs (kernel type __half): every group of xent_launch.h.
// One file per dtype, so that the kernels compile in parallel (see xent_launch.h).
#include "xent_launch_impl.cuh"

SMOOTHING_XENT_INSTANTIATE_INDEX(__half)
SMOOTHING_XENT_INSTANTIATE_PROB(__half)
SMOOTHING_XENT_INSTANTIATE_BWD(__half)
