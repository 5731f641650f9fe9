#include "mpool/nn/gemm.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

#include "mpool/base/error.h"

namespace mpool::nn::gemm {
namespace {

bool has_onednn() { return at::hasMKLDNN(); }

bool non_intel_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return !__builtin_cpu_is("intel") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// -1: not read yet; else a Float32Gemm.
std::atomic<int> g_choice{-1};
std::once_flag g_env_once;

void check_available(Float32Gemm b, std::string_view what) {
  check(b != Float32Gemm::kOneDnn || has_onednn(), ErrorCode::kInvalidInput,
        std::string(what) + ": onednn was asked for, but this torch was built without oneDNN (mkldnn)");
}

at::Tensor linear_pointwise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const char* attr,
                            const char* algorithm) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();
  return op.call(x, w, b.defined() ? std::optional<at::Tensor>(b) : std::nullopt, attr,
                 c10::List<std::optional<at::Scalar>>(), std::optional<c10::string_view>(algorithm));
}

at::Tensor linear_add(const at::Tensor& x, const at::Tensor& other, const at::Tensor& w, const at::Tensor& b) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkldnn::_linear_pointwise", "binary")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, c10::string_view)>();
  return op.call(x, other, w, b.defined() ? std::optional<at::Tensor>(b) : std::nullopt, "add");
}

}  // namespace

const char* name(Float32Gemm backend) { return backend == Float32Gemm::kOneDnn ? "onednn" : "aten"; }

Float32Gemm automatic() { return has_onednn() && non_intel_avx512() ? Float32Gemm::kOneDnn : Float32Gemm::kAten; }

std::string_view automatic_reason() {
  if (!has_onednn()) return "this torch has no oneDNN";
  if (non_intel_avx512()) return "a non-Intel CPU with AVX-512, where MKL runs its AVX2 code";
  return "an Intel CPU, or one without AVX-512: MKL's own ground";
}

Float32Gemm parse(std::string_view value, std::string_view what) {
  Float32Gemm b;
  if (value == "auto") b = automatic();
  else if (value == "aten") b = Float32Gemm::kAten;
  else if (value == "onednn") b = Float32Gemm::kOneDnn;
  else
    throw Error(ErrorCode::kInvalidInput,
                std::string(what) + ": '" + std::string(value) + "' is not a float32 GEMM backend (auto, aten, onednn)");
  check_available(b, what);
  return b;
}

Float32Gemm float32_gemm() {
  int c = g_choice.load(std::memory_order_acquire);
  if (c >= 0) return static_cast<Float32Gemm>(c);
  std::call_once(g_env_once, [] {
    const char* env = std::getenv("MPOOL_FLOAT32_GEMM");
    const std::string_view value = env != nullptr && *env != '\0' ? std::string_view(env) : "auto";
    int expected = -1;
    g_choice.compare_exchange_strong(expected, static_cast<int>(parse(value, "MPOOL_FLOAT32_GEMM")));
  });
  return static_cast<Float32Gemm>(g_choice.load(std::memory_order_acquire));
}

void set_float32_gemm(Float32Gemm backend) {
  check_available(backend, "set_float32_gemm");
  g_choice.store(static_cast<int>(backend), std::memory_order_release);
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         std::optional<Activation> act, const at::Tensor& residual) {
  if (float32_gemm() != Float32Gemm::kOneDnn) return {};
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat ||
      weight.dim() != 2 || !weight.is_contiguous() || weight.device() != x.device() || x.dim() < 1 ||
      x.size(-1) != weight.size(1) || x.numel() == 0 || weight.numel() == 0)
    return {};
  if (bias.defined() && (bias.scalar_type() != at::kFloat || bias.dim() != 1 || bias.size(0) != weight.size(0)))
    return {};
  if (residual.defined()) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = weight.size(0);
    if (act || residual.scalar_type() != at::kFloat || residual.sizes() != at::IntArrayRef(shape) ||
        !residual.device().is_cpu())
      return {};
    return linear_add(x.contiguous(), residual.contiguous(), weight, bias);
  }
  const at::Tensor xc = x.contiguous();
  if (!act) return linear_pointwise(xc, weight, bias, "none", "");
  switch (*act) {
    case Activation::kGelu: return linear_pointwise(xc, weight, bias, "gelu", "none");
    case Activation::kGeluTanh: return linear_pointwise(xc, weight, bias, "gelu", "tanh");
    case Activation::kRelu: return linear_pointwise(xc, weight, bias, "relu", "");
    case Activation::kSilu: return linear_pointwise(xc, weight, bias, "swish", "");
    case Activation::kQuickGelu: return {};
  }
  return {};
}

}  // namespace mpool::nn::gemm
