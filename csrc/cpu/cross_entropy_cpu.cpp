// CPU host functions: checks, dtype conversions of the small tensors, output allocation, and the
// choice of the kernel table for this processor.
// Per-operator headers, not <ATen/ATen.h>: that one costs several seconds of compile time per file.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <smoothing_ext/xent_math.h>

#include "cross_entropy_kernel.h"
#include "xent_checks.h"

namespace smoothing_ext::cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

KernelTable pick_table() {
  const char* env = std::getenv("SMOOTHING_EXT_CPU_CAPABILITY");
  const std::string want = env ? env : "";
  TORCH_CHECK_VALUE(want.empty() || want == "default" || want == "avx2" || want == "avx512",
                    "SMOOTHING_EXT_CPU_CAPABILITY must be default, avx2 or avx512, got '", want, "'");
  if (want == "default") return kernels_default();
  if (cpu_has_avx512() && (want.empty() || want == "avx512")) return kernels_avx512();
  if (cpu_has_avx2() && want != "default") return kernels_avx2();
  return kernels_default();
}

// The gradient is as large as the logits and written once. Above 32 MiB (glibc's largest
// dynamic mmap threshold) every allocation of that size is a fresh mmap that pays one page fault
// per 4 KiB on first touch, which costs as much as the kernel itself; 2 MiB transparent huge pages
// cut that by ~4x (THP is "madvise" on common distributions). Below it glibc reuses freed memory
// without any fault, which beats fresh huge pages, so smaller gradients use the default allocator.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kHugeMin = (size_t(32) << 20) + 1;

bool hugepages_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("SMOOTHING_EXT_HUGEPAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  return on;
}

at::Tensor empty_like_grad(const at::Tensor& input) {
  const auto opts = input.options().memory_format(at::MemoryFormat::Contiguous);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t nbytes = static_cast<size_t>(input.numel()) * input.element_size();
  if (hugepages_enabled() && nbytes >= kHugeMin) {
    const size_t len = nbytes + kHugePage;
    void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base != MAP_FAILED) {
      const uintptr_t aligned = (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1);
      madvise(reinterpret_cast<void*>(aligned), nbytes, MADV_HUGEPAGE);  // a hint; failure is harmless
      return at::from_blob(
          reinterpret_cast<void*>(aligned), input.sizes(), [base, len](void*) { munmap(base, len); },
          input.options());
    }
  }
#endif
  return at::empty(input.sizes(), opts);
}

void fill_common(XentArgs& a, const at::Tensor& x, const at::Tensor& w, const XentShape& sh, double eps,
                 bool off_target, const std::optional<double>& softcap) {
  a.dtype = x.scalar_type();
  a.input = x.const_data_ptr();
  a.weight = w.defined() ? w.const_data_ptr() : nullptr;
  a.weight_sum = w.defined() ? w.sum(at::kDouble).item<double>() : static_cast<double>(sh.C);
  a.N = sh.N;
  a.C = sh.C;
  a.S = sh.S;
  const auto c = smooth_coefs<double>(eps, sh.C, off_target);
  a.on = c.on;
  a.off = c.off;
  a.softcap = check_softcap(softcap, acc_dtype(x.scalar_type()));
  a.grad_scale = 1.0;
}

// Probability targets are read in their own dtype when it is the input's or the accumulation
// dtype (float32 targets of bfloat16 logits under autocast: no rounding, no copy); any other
// dtype is converted to the accumulation dtype.
at::Tensor prob_target_as_read(const at::Tensor& target, at::ScalarType input_dtype, at::ScalarType acc) {
  const auto t = target.scalar_type();
  return (t == input_dtype || t == acc ? target : target.to(acc)).contiguous();
}

// The backward ops' upstream gradients and saved lse, converted to the accumulation dtype.
struct BackwardInputs {
  at::Tensor g, gl, l;
};

BackwardInputs backward_inputs(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                               const at::Tensor& lse, at::ScalarType acc, XentArgs& a) {
  BackwardInputs b;
  b.g = grad_as_acc(grad_loss, acc);
  b.gl = (grad_lse.has_value() && grad_lse->defined()) ? grad_as_acc(*grad_lse, acc) : at::Tensor();
  b.l = grad_as_acc(lse, acc);
  a.grad_loss = b.g.const_data_ptr();
  a.grad_lse = b.gl.defined() ? b.gl.const_data_ptr() : nullptr;
  a.lse_in = b.l.const_data_ptr();
  return b;
}

// Shared by both fused ops: checks, then loss/lse and the gradient written to `grad`.
std::tuple<at::Tensor, at::Tensor> fused_into(const at::Tensor& input, const at::Tensor& target,
                                              const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                              double label_smoothing, bool off_target,
                                              const std::optional<double>& softcap, double z_loss,
                                              const std::optional<at::Tensor>& grad_scale, bool inplace,
                                              const std::optional<at::Tensor>& out_grad) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  check_fused_extras(z_loss, grad_scale, input, inplace);
  const auto acc = acc_dtype(input.scalar_type());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (input.numel() == 0) return {loss, lse};
  const at::Tensor t = index_target_as_int64(target);
  // Targets are checked before anything is computed: the in-place form must not have overwritten
  // the logits by the time it raises.
  {
    const int64_t* tp = t.const_data_ptr<int64_t>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i) {
      if (tp[i] != ignore_index && (tp[i] < 0 || tp[i] >= sh.C)) throw_bad_target(tp[i], i, input, target, ignore_index);
    }
  }
  const at::Tensor x = inplace ? input : input.contiguous();
  const at::Tensor w = weight_as_acc(weight, acc);
  XentArgs a{};
  fill_common(a, x, w, sh, label_smoothing, off_target, softcap);
  a.target = t.const_data_ptr();
  a.ignore_index = ignore_index;
  a.loss = loss.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr();
  a.z_loss = z_loss;
  if (grad_scale.has_value() && grad_scale->defined()) a.grad_scale = grad_scale->item<double>();
  a.grad_input = inplace ? input.mutable_data_ptr() : out_grad->mutable_data_ptr();
  active_kernels().index_fused(a);
  return {loss, lse};
}

}  // namespace

const KernelTable& active_kernels() {
  static const KernelTable table = pick_table();
  return table;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cpu(const at::Tensor& input, const at::Tensor& target,
                                                             const std::optional<at::Tensor>& weight,
                                                             int64_t ignore_index, double label_smoothing,
                                                             bool off_target, std::optional<double> softcap) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  check_softcap(softcap, acc_dtype(input.scalar_type()));
  const auto acc = acc_dtype(input.scalar_type());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (loss.numel() == 0) return {loss, lse};
  const at::Tensor x = input.contiguous();
  const at::Tensor t = index_target_as_int64(target);
  const at::Tensor w = weight_as_acc(weight, acc);
  XentArgs a{};
  fill_common(a, x, w, sh, label_smoothing, off_target, softcap);
  a.target = t.const_data_ptr();
  a.ignore_index = ignore_index;
  a.loss = loss.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr();
  const int64_t bad = active_kernels().index_forward(a);
  if (bad >= 0) throw_bad_target(t.const_data_ptr<int64_t>()[bad], bad, input, target, ignore_index);
  return {loss, lse};
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                      const at::Tensor& input, const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                      int64_t ignore_index, double label_smoothing, bool off_target,
                                      std::optional<double> softcap) {
  const XentShape sh = check_index_forward(input, target, weight, label_smoothing);
  check_softcap(softcap, acc_dtype(input.scalar_type()));
  check_backward_extras(grad_loss, grad_lse, lse, sh, input);
  at::Tensor grad = empty_like_grad(input);
  if (grad.numel() == 0) return grad;
  const auto acc = acc_dtype(input.scalar_type());
  const at::Tensor x = input.contiguous();
  const at::Tensor t = index_target_as_int64(target);
  const at::Tensor w = weight_as_acc(weight, acc);
  XentArgs a{};
  fill_common(a, x, w, sh, label_smoothing, off_target, softcap);
  const BackwardInputs keep = backward_inputs(grad_loss, grad_lse, lse, acc, a);
  a.target = t.const_data_ptr();
  a.ignore_index = ignore_index;
  a.grad_input = grad.mutable_data_ptr();
  active_kernels().index_backward(a);
  return grad;
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_prob_forward_cpu(const at::Tensor& input, const at::Tensor& target,
                                                                  const std::optional<at::Tensor>& weight,
                                                                  double label_smoothing, bool off_target,
                                                                  std::optional<double> softcap) {
  const XentShape sh = check_prob_forward(input, target, weight, label_smoothing);
  check_softcap(softcap, acc_dtype(input.scalar_type()));
  const auto acc = acc_dtype(input.scalar_type());
  at::Tensor loss = at::empty(sh.loss_sizes, input.options().dtype(acc));
  at::Tensor lse = at::empty(sh.loss_sizes, input.options().dtype(acc));
  if (loss.numel() == 0) return {loss, lse};
  const at::Tensor x = input.contiguous();
  const at::Tensor y = prob_target_as_read(target, input.scalar_type(), acc);
  const at::Tensor w = weight_as_acc(weight, acc);
  XentArgs a{};
  fill_common(a, x, w, sh, label_smoothing, off_target, softcap);
  a.target = y.const_data_ptr();
  a.target_dtype = y.scalar_type();
  a.loss = loss.mutable_data_ptr();
  a.lse = lse.mutable_data_ptr();
  active_kernels().prob_forward(a);
  return {loss, lse};
}

at::Tensor cross_entropy_prob_backward_cpu(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                           const at::Tensor& input, const at::Tensor& target,
                                           const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                                           double label_smoothing, bool off_target, std::optional<double> softcap) {
  const XentShape sh = check_prob_forward(input, target, weight, label_smoothing);
  check_softcap(softcap, acc_dtype(input.scalar_type()));
  check_backward_extras(grad_loss, grad_lse, lse, sh, input);
  at::Tensor grad = empty_like_grad(input);
  if (grad.numel() == 0) return grad;
  const auto acc = acc_dtype(input.scalar_type());
  const at::Tensor x = input.contiguous();
  const at::Tensor y = prob_target_as_read(target, input.scalar_type(), acc);
  const at::Tensor w = weight_as_acc(weight, acc);
  XentArgs a{};
  fill_common(a, x, w, sh, label_smoothing, off_target, softcap);
  const BackwardInputs keep = backward_inputs(grad_loss, grad_lse, lse, acc, a);
  a.target = y.const_data_ptr();
  a.target_dtype = y.scalar_type();
  a.grad_input = grad.mutable_data_ptr();
  active_kernels().prob_backward(a);
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fused_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double label_smoothing, bool off_target, std::optional<double> softcap, double z_loss,
    const std::optional<at::Tensor>& grad_scale) {
  at::Tensor grad = empty_like_grad(input);
  auto [loss, lse] = fused_into(input, target, weight, ignore_index, label_smoothing, off_target, softcap, z_loss,
                                grad_scale, /*inplace=*/false, grad);
  return {loss, lse, grad};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_fused_inplace_cpu(
    at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight, int64_t ignore_index,
    double label_smoothing, bool off_target, std::optional<double> softcap, double z_loss,
    const std::optional<at::Tensor>& grad_scale) {
  return fused_into(input, target, weight, ignore_index, label_smoothing, off_target, softcap, z_loss, grad_scale,
                    /*inplace=*/true, std::nullopt);
}

void scale_grad_rows_cpu(at::Tensor& grad, const at::Tensor& scale) {
  const XentShape sh = check_scale_rows(grad, scale);
  if (grad.numel() == 0) return;
  const at::Tensor f = grad_as_acc(scale, acc_dtype(grad.scalar_type()));
  XentArgs a{};
  a.dtype = grad.scalar_type();
  a.N = sh.N;
  a.C = sh.C;
  a.S = sh.S;
  a.grad_input = grad.mutable_data_ptr();
  a.grad_loss = f.const_data_ptr();
  a.scale_numel = f.numel();
  active_kernels().scale_rows(a);
}

}  // namespace smoothing_ext::cpu

namespace smoothing_ext {
// Name of the instruction set the CPU kernels run with (default, avx2 or avx512).
std::string cpu_capability() { return cpu::active_kernels().name; }
}  // namespace smoothing_ext

TORCH_LIBRARY_IMPL(smoothing_ext, CPU, m) {
  m.impl("cross_entropy_forward", &smoothing_ext::cpu::cross_entropy_forward_cpu);
  m.impl("_cross_entropy_backward", &smoothing_ext::cpu::cross_entropy_backward_cpu);
  m.impl("cross_entropy_prob_forward", &smoothing_ext::cpu::cross_entropy_prob_forward_cpu);
  m.impl("_cross_entropy_prob_backward", &smoothing_ext::cpu::cross_entropy_prob_backward_cpu);
  m.impl("cross_entropy_fused", &smoothing_ext::cpu::cross_entropy_fused_cpu);
  m.impl("cross_entropy_fused_", &smoothing_ext::cpu::cross_entropy_fused_inplace_cpu);
  m.impl("_scale_grad_rows_", &smoothing_ext::cpu::scale_grad_rows_cpu);
}
