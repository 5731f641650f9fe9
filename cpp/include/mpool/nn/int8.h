#pragma once
// int8 weight-only quantization of linear layers (register(..., dtype="int8")).
// A weight (out, in) is stored as int8 rows q with one float32 scale per output
// row (symmetric, per output channel): W ~ q * scales[:, None]. A layer
// computes x @ (q * scales)^T up to float32 rounding, and up to the int16
// rounding of x where the int16 row kernels (AVX-512 VNNI, AVX2) run the rows:
//   - a few rows (a decode step, a small batch of them): our kernel streams each
//     int8 weight row once for all the rows. With AVX-512 VNNI, each x row is
//     quantized to int16 (max|x| / 32767 a step) and the integer products are
//     summed exactly (vpdpwssd), three times fewer instructions a weight than
//     widening it to float32; with AVX2 the same through vpmaddwd. Else (AVX-512
//     without VNNI, plain C++) the weights are widened to float32 in registers;
//   - many rows (a prefill chunk, an embedding batch): where the CPU has AMX-BF16
//     and the MKL inside torch exports its bf16 GEMM, q is widened to bfloat16
//     (exact: |q| <= 127) and x is split into two bfloat16 parts (x = hi + lo
//     to 2^-16 relative), two bf16 GEMMs with float32 output. Else, with an
//     int16 ISA, the same int16 kernel in tiles (x rows kept in L2, weight rows
//     in L1/L2); else q * scales is widened to float32 for ATen's GEMM.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace mpool::nn::int8 {

/// A quantized weight: q int8 (out, in), scales float32 (out).
struct Quantized {
  at::Tensor q;
  at::Tensor scales;
};

/// Per-output-row symmetric quantization of a floating-point weight (out, in):
/// scale = max|w_row| / 127 (1 for a row of zeros), q = round(w / scale). On
/// the meta device: meta tensors of those shapes and dtypes. InvalidInput for a
/// weight that is not 2-D floating point, or names the first row holding a
/// non-finite value; messages name the weight as `what` (its tensor name).
Quantized quantize_rows(const at::Tensor& weight, std::string_view what = "");

/// q * scales[:, None] as float32: the weight the kernels compute with.
at::Tensor dequantize(const Quantized& w);

/// The instruction sets of the row kernel. kAvx2Int16 and kAvx512Vnni quantize
/// each x row to int16 (symmetric, max|x| / 32767: within 2^-16 of max|x| a
/// value) and sum the integer products exactly (vpmaddwd, vpdpwssd) before
/// float32; a row holding a non-finite value gives NaN outputs. The others
/// widen the weights to float32. In order of preference where the CPU has them.
enum class Isa { kScalar, kAvx2, kAvx2Int16, kAvx512, kAvx512Vnni };
/// How linear() runs: kAuto picks by the number of rows.
enum class Path { kAuto, kRows, kGemm };

/// The widest row kernel this CPU runs.
Isa best_isa();
/// "scalar", "avx2", "avx2_int16", "avx512" or "avx512_vnni".
std::string isa_name(Isa isa);
/// Whether the many-row path uses the bfloat16 split GEMM (AMX-BF16 and MKL's
/// cblas_gemm_bf16bf16f32 present) rather than a float32 one.
bool has_bf16_gemm();
/// Rows up to which the row kernel streams each weight row once for all of
/// them (decode steps); kAuto gives it any number up to this.
int64_t rows_kernel_max_rows();
/// Whether kAuto runs `m` rows on the row kernel with `isa`: up to
/// rows_kernel_max_rows(), and any number with the int16 ISAs unless the
/// AMX-BF16 GEMM is there. Their integer products run at about twice the rate
/// of a float32 GEMM over widened weights (measured on Zen 4, at 17 to 512 rows
/// of the decoders' and MiniLM's shapes), and each row's bits stay its own
/// whatever rows run beside it.
bool auto_takes_rows(int64_t m, Isa isa);

/// x (..., in), float32 on the CPU, @ (q * scales)^T + bias (float32, or
/// undefined), as float32 (..., out).
at::Tensor linear(const at::Tensor& x, const Quantized& w, const at::Tensor& bias);
/// The same on a chosen row-kernel ISA and path (tests and benchmarks);
/// InvalidInput when this CPU lacks `isa`.
at::Tensor linear_with(const at::Tensor& x, const Quantized& w, const at::Tensor& bias, Isa isa, Path path);

}  // namespace mpool::nn::int8
