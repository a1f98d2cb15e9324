// The cross-entropy kernels for float64 inputs (kernel type double): every group of xent_launch.h.
// One file per dtype, so that the kernels compile in parallel (see xent_launch.h).
#include "xent_launch_impl.cuh"

SMOOTHING_XENT_INSTANTIATE_INDEX(double)
SMOOTHING_XENT_INSTANTIATE_PROB(double)
SMOOTHING_XENT_INSTANTIATE_BWD(double)
