// The cross-entropy kernels for float32 inputs (kernel type float): every group of xent_launch.h.
// One file per dtype, so that the kernels compile in parallel (see xent_launch.h).
#include "xent_launch_impl.cuh"

SMOOTHING_XENT_INSTANTIATE_INDEX(float)
SMOOTHING_XENT_INSTANTIATE_PROB(float)
SMOOTHING_XENT_INSTANTIATE_BWD(float)
