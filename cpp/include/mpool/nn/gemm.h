#pragma once
// Which library runs the float32 GEMMs of linear() on the CPU (past the row
// kernel of kernels.h): ATen's (its BLAS, MKL in the PyPI torch) or oneDNN's
// (the copy inside libtorch, through its mkldnn::_linear_pointwise op).
//
// Why a choice: MKL dispatches by CPU vendor. On an AMD CPU with AVX-512 it runs
// its AVX2 code, while oneDNN generates AVX-512 code for whatever CPU it finds:
// measured on a 2-core AMD EPYC (Zen, AVX-512), MiniLM's layer shapes ran at 200
// to 215 GFLOP/s through ATen and 445 to 475 through oneDNN (docs/benchmarks.md).
// On Intel CPUs MKL is at home, so ATen keeps them.
//
// The process's choice is read once from MPOOL_FLOAT32_GEMM: "auto" (the
// default: oneDNN on a non-Intel x86 CPU with AVX-512 when this torch has
// oneDNN, else ATen), "aten" or "onednn". Both compute in IEEE float32 and give
// the same values to float32 rounding, not the same bits. bfloat16 GEMMs are
// oneDNN's in ATen already and are not affected.
#include <ATen/ATen.h>

#include <optional>
#include <string_view>

#include "mpool/nn/activation.h"

namespace mpool::nn::gemm {

enum class Float32Gemm { kAten, kOneDnn };

/// The process's current choice (MPOOL_FLOAT32_GEMM at first use; InvalidInput
/// naming the variable when it holds anything else, or "onednn" where this torch
/// has no oneDNN).
Float32Gemm float32_gemm();
/// Replaces the choice for every later GEMM of the process (tests and
/// benchmarks compare the two in one process). InvalidInput for oneDNN where
/// this torch has none.
void set_float32_gemm(Float32Gemm backend);
/// "aten" or "onednn".
const char* name(Float32Gemm backend);
/// Parses "aten", "onednn" or "auto" (auto: what this CPU gets by default);
/// InvalidInput naming `what` otherwise.
Float32Gemm parse(std::string_view value, std::string_view what);
/// What "auto" picks on this machine, and why, in a sentence.
Float32Gemm automatic();
std::string_view automatic_reason();

/// act(x @ weight^T + bias) + residual through oneDNN in one pass (the
/// activation and the sum fused into the GEMM's output), when the process's
/// choice is oneDNN and it applies: CPU float32 tensors, a contiguous 2-D
/// weight, x's last dimension its width, at least one row; an activation oneDNN
/// has (gelu, gelu_tanh, relu, silu; not quick_gelu) or none; a residual (of the
/// output's shape) only without one. Otherwise an undefined tensor, and the
/// caller computes it its own way.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         std::optional<Activation> act = std::nullopt, const at::Tensor& residual = at::Tensor());

}  // namespace mpool::nn::gemm
