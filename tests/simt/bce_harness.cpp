// Test harness: runs the real CUDA kernels of csrc/cuda/bce_kernels.cuh (binary cross entropy with
// logits) on the CPU through ../shared/simt. Built by tests/test_bce_simt.py into a shared library
// with a C ABI (loaded with ctypes); torch-free, so it builds in seconds and under AddressSanitizer.
//
//   g++ -std=c++17 -O2 -fno-strict-aliasing -DSIMT_CPU -I<simt>/include -I<repo>/csrc -I<repo>/csrc/include
//       -shared -fPIC bce_harness.cpp -o libbce_simt.so -pthread
//
// Pointers are host memory (simt accepts them as device pointers); the caller owns them and builds
// the operand descriptions (bce::Operand: element i reads (i / inner) % period).
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "cuda/bce_kernels.cuh"

extern "C" {

struct BceSimtArgs {
  int32_t backward;  // 0 forward (loss), 1 backward (grad_input), 2 sum (loss summed: out[0])
  int32_t dtype;     // input: 0 float32, 1 float64, 2 float16, 3 bfloat16
  int32_t num_sms;   // the SM count the launcher assumes (grid size)
  int32_t pad_;
  const void* x;
  int64_t numel;
  smoothing_ext::bce::Operand target, weight, pos_weight, grad;
  double eps;
  void* out;  // loss (accumulation dtype), grad_input (input dtype) or the sum (one acc value)
  // the launcher's plan, reported back so that tests can tell which paths ran
  int64_t head;
  int32_t out_vec;
  int32_t target_vec;
};

}  // extern "C"

namespace {

template <typename scalar_t, typename acc_t>
int run(BceSimtArgs& a) {
  using namespace smoothing_ext::bce::cuda;
  Params<scalar_t, acc_t> p{};
  p.x = static_cast<const scalar_t*>(a.x);
  p.numel = a.numel;
  p.target = a.target;
  p.weight = a.weight;
  p.pos_weight = a.pos_weight;
  p.grad = a.grad;
  const auto c = smoothing_ext::bce::coefs<acc_t>(a.eps);
  p.on = c.on;
  p.off = c.off;
  cudaStream_t stream = nullptr;
  std::vector<acc_t> partials;  // sum: the workspace the host function takes from the allocator
  if (a.backward == 2) {
    partials.assign(static_cast<size_t>(sum_blocks<scalar_t>(a.numel, a.num_sms)), acc_t(0));
    p.loss = static_cast<acc_t*>(a.out);
    p.partials = partials.data();
    launch_sum<scalar_t, acc_t>(p, a.num_sms, stream);
  } else if (a.backward) {
    p.grad_input = static_cast<scalar_t*>(a.out);
    launch_backward<scalar_t, acc_t>(p, a.num_sms, stream);
  } else {
    p.loss = static_cast<acc_t*>(a.out);
    launch_forward<scalar_t, acc_t>(p, a.num_sms, stream);
  }
  a.head = p.head;
  a.out_vec = p.out_vec;
  a.target_vec = p.target.vec;
  return cudaGetLastError() == cudaSuccess ? 0 : 4;
}

}  // namespace

extern "C" int bce_simt_run(BceSimtArgs* a) {
  if (a->numel <= 0) return 0;  // the host functions return before launching
  switch (a->dtype) {
    case 0: return run<float, float>(*a);
    case 1: return run<double, double>(*a);
    case 2: return run<__half, float>(*a);
    case 3: return run<__nv_bfloat16, float>(*a);
    default: return 5;
  }
}
