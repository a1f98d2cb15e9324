// C++ consumer test of the CMake/LibTorch build: calls the smoothing_ext ops through the
// dispatcher, the way any C++ program linking libsmoothing_ext would, and checks them against
// ATen's own label-smoothed cross entropy (at::cross_entropy_loss, reduction none) and its
// autograd gradient. Run by ctest; also usable as `smoothing_ext_test_ops [--cuda]`.
//
// The references are evaluated in float64 on the same (already rounded) inputs, so the tolerances
// only cover the kernels' own float32 accumulation and the rounding of the gradient to the input dtype.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <smoothing_ext/xent_math.h>  // installed torch-free header: checks the include path

#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, int64_t, double, bool,
                                                     std::optional<double>);
using BackwardFn = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                              const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                              int64_t, double, bool, std::optional<double>);

int g_failures = 0;
int g_checks = 0;

void check_close(const std::string& what, const at::Tensor& got, const at::Tensor& want, double rtol,
                 double atol) {
  ++g_checks;
  if (got.sizes() != want.sizes()) {
    std::ostringstream os;
    os << "shape " << got.sizes() << " != expected " << want.sizes();
    std::printf("FAIL %s: %s\n", what.c_str(), os.str().c_str());
    ++g_failures;
    return;
  }
  const at::Tensor g = got.detach().to(at::kCPU, at::kDouble);
  const at::Tensor w = want.detach().to(at::kCPU, at::kDouble);
  const at::Tensor err = (g - w).abs();
  const at::Tensor tol = atol + rtol * w.abs();
  const bool finite_ok = at::equal(at::isfinite(g), at::isfinite(w));
  const bool ok = finite_ok && (err.le(tol) | (g.isnan() & w.isnan())).all().item<bool>();
  if (!ok) {
    std::printf("FAIL %s: max abs err %.3e (rtol %.1e, atol %.1e)%s\n", what.c_str(),
                err.numel() ? at::nan_to_num(err).max().item<double>() : 0.0, rtol, atol,
                finite_ok ? "" : ", non-finite values differ");
    ++g_failures;
  }
}

struct Case {
  std::vector<int64_t> input_shape;  // (C,), (N, C) or (N, C, d...)
  at::ScalarType dtype;
  double eps;
  bool weighted;
  int64_t ignore_index;
  bool use_ignore;  // put ignore_index into some targets
};

std::string describe(const Case& c, const at::Device& dev) {
  std::ostringstream os;
  os << dev << " " << c.dtype << " " << at::IntArrayRef(c.input_shape) << " eps=" << c.eps
     << (c.weighted ? " weighted" : "") << " ignore_index=" << c.ignore_index
     << (c.use_ignore ? " (used)" : "");
  return os.str();
}

void run_case(const Case& c, const at::Device& dev, const c10::TypedOperatorHandle<ForwardFn>& fwd,
              const c10::TypedOperatorHandle<BackwardFn>& bwd) {
  const std::string name = describe(c, dev);
  const auto fopts = at::TensorOptions().dtype(c.dtype).device(dev);
  const int64_t C = c.input_shape.size() == 1 ? c.input_shape[0] : c.input_shape[1];
  std::vector<int64_t> target_shape;
  if (c.input_shape.size() > 1) {
    target_shape.push_back(c.input_shape[0]);
    for (size_t d = 2; d < c.input_shape.size(); ++d) target_shape.push_back(c.input_shape[d]);
  }

  at::Tensor input = (at::randn(c.input_shape, at::kDouble) * 3.0).to(fopts);
  at::Tensor target = at::randint(0, C, target_shape, at::TensorOptions().dtype(at::kLong));
  if (c.use_ignore && target.numel() > 1) {
    target.view(-1).slice(0, 0, target.numel(), 3).fill_(c.ignore_index);
  }
  target = target.to(dev);
  std::optional<at::Tensor> weight;
  if (c.weighted) weight = (at::rand({C}, at::kDouble) + 0.5).to(fopts);

  // Ours: per-element loss (float32 / float64 accumulation dtype) and lse.
  auto [loss, lse] = fwd.call(input, target, weight, c.ignore_index, c.eps, false, std::nullopt);

  // Reference: ATen's label-smoothed cross entropy on the same values, in float64, with autograd.
  at::Tensor x64 = input.detach().to(at::kDouble).set_requires_grad(true);
  std::optional<at::Tensor> w64;
  if (weight) w64 = weight->to(at::kDouble);
  at::Tensor ref = at::cross_entropy_loss(x64, target, w64, at::Reduction::None, c.ignore_index, c.eps);

  const bool low = c.dtype == at::kHalf || c.dtype == at::kBFloat16;
  const bool dbl = c.dtype == at::kDouble;
  const double loss_rtol = dbl ? 1e-10 : 1e-5, loss_atol = dbl ? 1e-10 : 1e-5;
  check_close(name + " loss", loss, ref, loss_rtol, loss_atol);
  const at::ScalarType acc = dbl ? at::kDouble : at::kFloat;
  if (loss.scalar_type() != acc) {
    std::printf("FAIL %s: loss dtype %s, expected %s\n", name.c_str(), c10::toString(loss.scalar_type()),
                c10::toString(acc));
    ++g_failures;
  }
  // lse of every row (ignored rows too), against at::logsumexp over the class dim.
  const int64_t class_dim = c.input_shape.size() == 1 ? 0 : 1;
  check_close(name + " lse", lse, at::logsumexp(x64.detach(), {class_dim}), loss_rtol, loss_atol);

  // Backward: upstream gradient g per element; ours vs d(sum(g * ref))/dx by autograd.
  at::Tensor grad_loss = at::randn(ref.sizes(), at::TensorOptions().dtype(acc)).to(dev);
  at::Tensor gx = bwd.call(grad_loss, std::nullopt, input, target, weight, lse, c.ignore_index, c.eps, false, std::nullopt);
  auto ref_grads = torch::autograd::grad({ref}, {x64}, {grad_loss.to(at::kDouble)});
  if (gx.scalar_type() != c.dtype) {
    std::printf("FAIL %s: grad dtype %s, expected %s\n", name.c_str(), c10::toString(gx.scalar_type()),
                c10::toString(c.dtype));
    ++g_failures;
  }
  const double grad_rtol = low ? 1e-2 : (dbl ? 1e-10 : 1e-5);
  const double grad_atol = low ? 1e-2 : (dbl ? 1e-12 : 1e-6);
  check_close(name + " grad", gx, ref_grads[0], grad_rtol, grad_atol);

  // grad_lse: d lse_i / d x_j = p_j, so adding h * lse to the objective adds h * softmax.
  at::Tensor grad_lse = at::randn(lse.sizes(), at::TensorOptions().dtype(acc)).to(dev);
  at::Tensor gx2 = bwd.call(grad_loss, grad_lse, input, target, weight, lse, c.ignore_index, c.eps, false, std::nullopt);
  at::Tensor p = at::softmax(x64.detach(), class_dim);
  at::Tensor want2 = ref_grads[0] + p * grad_lse.to(at::kCPU, at::kDouble).unsqueeze(class_dim);
  check_close(name + " grad with grad_lse", gx2, want2, grad_rtol, grad_atol);
}

}  // namespace

int main(int argc, char** argv) {
  bool cuda = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--cuda") == 0) cuda = true;
  }
  if (cuda && !at::hasCUDA()) {
    std::printf("SKIP: no CUDA device (or torch without CUDA)\n");
    return 77;
  }
  at::manual_seed(0);

  auto& dispatcher = c10::Dispatcher::singleton();
  if (!dispatcher.findSchema({"smoothing_ext::cross_entropy_forward", ""}).has_value()) {
    std::printf("FAIL: smoothing_ext::cross_entropy_forward is not registered (library not loaded?)\n");
    return 1;
  }
  auto fwd = dispatcher.findSchemaOrThrow("smoothing_ext::cross_entropy_forward", "").typed<ForwardFn>();
  auto bwd = dispatcher.findSchemaOrThrow("smoothing_ext::_cross_entropy_backward", "").typed<BackwardFn>();
  std::printf("schema: %s\n", c10::toString(fwd.schema()).c_str());

  const at::Device dev = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
  const std::vector<Case> cases = {
      {{8, 10}, at::kFloat, 0.1, false, -100, false},
      {{8, 10}, at::kFloat, 0.0, false, -100, false},
      {{7, 1000}, at::kFloat, 0.2, true, -100, true},
      {{4, 5, 3, 2}, at::kFloat, 0.1, true, 2, true},  // spatial dims, ignore_index is a valid class
      {{17}, at::kFloat, 0.3, false, -100, false},      // (C,) input, 0-dim target
      {{6, 300}, at::kDouble, 0.1, true, -1, true},
      {{6, 300}, at::kBFloat16, 0.1, false, -100, true},
      {{5, 129}, at::kHalf, 0.05, true, -100, false},
      {{3, 7}, at::kFloat, 1.0, false, -100, false},   // eps = 1: uniform target
      {{0, 7}, at::kFloat, 0.1, false, -100, false},   // empty batch
  };
  for (const Case& c : cases) {
    try {
      run_case(c, dev, fwd, bwd);
    } catch (const std::exception& e) {
      std::printf("FAIL %s: exception: %s\n", describe(c, dev).c_str(), e.what());
      ++g_failures;
    }
  }

  // A user error surfaces as a c10 exception naming the argument, not a crash.
  try {
    fwd.call(at::randn({4, 3}), at::zeros({4}, at::kLong), std::nullopt, -100, 1.5, false, std::nullopt);
    std::printf("FAIL: label_smoothing=1.5 was accepted\n");
    ++g_failures;
  } catch (const c10::Error&) {
  }

  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
