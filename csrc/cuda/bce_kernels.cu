// The BCE-with-logits kernels of bce_kernels.cuh for every dtype, behind bce_launch.h (nvcc, no
// ATen: see xent_launch.h for why the host glue lives in bce_cuda.cpp).
#include <type_traits>

#include "bce_kernels.cuh"
#include "bce_launch.h"

namespace smoothing_ext {
namespace bce {
namespace cuda {

template <typename scalar_t>
int bce_sum_blocks(int64_t numel, int num_sms) {
  return sum_blocks<scalar_t>(numel, num_sms);
}

template <typename scalar_t>
void bce_launch(BceOp op, const BceRequest& r, int num_sms, cudaStream_t stream) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  // the Params the host functions used to build themselves (params_of)
  Params<scalar_t, acc_t> p{};
  p.x = static_cast<const scalar_t*>(r.x);
  p.numel = r.numel;
  p.target = r.target;
  p.weight = r.weight;
  p.pos_weight = r.pos_weight;
  p.grad = r.grad;
  const auto c = coefs<acc_t>(r.label_smoothing);
  p.on = c.on;
  p.off = c.off;
  p.loss = static_cast<acc_t*>(r.loss);
  p.partials = static_cast<acc_t*>(r.partials);
  p.grad_input = static_cast<scalar_t*>(r.grad_input);
  switch (op) {
    case BceOp::kForward:
      launch_forward<scalar_t, acc_t>(p, num_sms, stream);
      break;
    case BceOp::kBackward:
      launch_backward<scalar_t, acc_t>(p, num_sms, stream);
      break;
    case BceOp::kSum:
      launch_sum<scalar_t, acc_t>(p, num_sms, stream);
      break;
  }
}

#define SMOOTHING_BCE_INSTANTIATE(T)                    \
  template int bce_sum_blocks<T>(int64_t, int);         \
  template void bce_launch<T>(BceOp, const BceRequest&, int, cudaStream_t);
SMOOTHING_BCE_INSTANTIATE(float)
SMOOTHING_BCE_INSTANTIATE(double)
SMOOTHING_BCE_INSTANTIATE(__half)
SMOOTHING_BCE_INSTANTIATE(__nv_bfloat16)
#undef SMOOTHING_BCE_INSTANTIATE

}  // namespace cuda
}  // namespace bce
}  // namespace smoothing_ext
