#pragma once
// CPU kernels the model families share where ATen's general routines leave
// speed on the table. Each one falls back to ATen when it does not apply.
#include <ATen/ATen.h>

namespace mpool::nn::kernels {

/// x @ weight^T + bias, like at::linear. A single float32 or bfloat16 row on the
/// CPU (one decode step) runs as a matrix-vector product that streams the weight
/// once at memory bandwidth (AVX2/FMA, float32 accumulation, split across the
/// intra-op threads); everything else goes to at::linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = at::Tensor());

/// Whether linear() has its fast path on this CPU.
bool has_fast_gemv();

}  // namespace mpool::nn::kernels
