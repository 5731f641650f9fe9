#pragma once
// CPU kernels the model families share where ATen's general routines leave
// speed on the table. Each one falls back to ATen when it does not apply.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mpool::nn::kernels {

/// Runs body(begin, end) over [0, n) in chunks of at least `grain`, on at most
/// torch's intra-op thread count (at::get_num_threads()), the caller included.
/// The threads are TBB's, not ATen's OpenMP team: with libgomp, once a process
/// holds more OpenMP threads than it has cores (its main thread ran a torch op,
/// or two replicas each did), every OpenMP region wakes its workers through the
/// kernel instead of a spin, which cost a one-row decode step a third of its
/// speed. The decode-step kernels below use this; big GEMMs stay on ATen.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

/// The same for a big kernel amid torch's own parallel ops (a prefill chunk, an
/// embedding batch): on the calling thread's torch (OpenMP) team, the one those
/// ops use. On TBB's threads, the OpenMP workers left spinning after each op
/// took the cores from them: the int8 row kernel at 128 rows ran on one thread
/// while libgomp spun on the other. parallel_for where torch has no OpenMP team,
/// a SerialTorchOps scope holds this thread's ops serial, or the call comes
/// from inside a parallel_for body (a TBB worker must not start a team).
void parallel_for_beside_torch(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

/// With AVX-512, a one-row product reads weight rows of up to this many bytes
/// one row a pass (the block then streams from memory as one sequential run),
/// wider ones eight rows a pass. Measured on an AMD Zen 4 (docs/benchmarks.md):
/// eight interleaved rows a few hundred bytes apart streamed at about half the
/// rate (bf16 1,536-byte rows 10.3 -> 22.9 GB/s, float32 1,024-byte rows 17.7 ->
/// 34.1), while from about 3 KiB up eight rows a pass does as well or better.
constexpr int64_t kSequentialRowBytes = 2048;

/// x @ weight^T + bias, like at::linear. Up to row_kernel_max_rows() float32 or
/// bfloat16 rows on the CPU (decode steps, one sequence's or a batch's) run
/// through our row kernel, which streams the weight once at memory bandwidth for
/// all rows (float32 accumulation, 16 lanes with AVX-512 where the CPU has it,
/// else 8 with AVX2/FMA; for bfloat16 on a CPU with AVX512-BF16, its pair dot
/// products, exact products summed in float32; split across the intra-op
/// threads). Each row's result there is the same bits
/// whatever other rows run with it. Everything else goes to the process's float32 GEMM
/// (gemm.h: oneDNN where MKL would run below the CPU's width) or at::linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = at::Tensor());

/// Whether linear(x, weight, bias) runs through the row kernel.
bool row_kernel_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = at::Tensor());

/// Attention of one query row per head (a decode step): q (b, heads, 1, d)
/// against k (b, kv_heads, t, d) and v (b, kv_heads, t, dv), heads a multiple of
/// kv_heads, no mask, scores scaled by `scale`; float32 accumulation (16 lanes
/// with AVX-512 where the CPU has it, else 8 with AVX2/FMA) and an exact
/// two-pass softmax, split over (batch, head) with parallel_for. Returns an
/// undefined tensor where it does not apply (not the CPU, not float32 or
/// bfloat16, a last dimension with a stride, no AVX2/FMA); the caller then uses
/// ATen's scaled_dot_product_attention.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

/// softmax(scale q k^T + mask) v for any number of query rows (encoders,
/// prefill, vision and diffusion transformers): q (b, heads, n, d) against k
/// (b, kv_heads, t, d) and v (b, kv_heads, t, dv), float32 on the CPU, heads a
/// multiple of kv_heads, last dimensions contiguous. `mask` is undefined, or a
/// boolean (true = attend) or additive float32 mask broadcastable to (b, heads,
/// n, t); `causal` (without a mask) lets row i see keys 0..i, as ATen's
/// is_causal. Rows whose every key is masked come out zero, as ATen's CPU
/// attention gives. Keys past a row block's last unmasked one are skipped
/// (padding costs nothing), and a row's bits depend only on its own query, keys,
/// values and mask: not on the other rows, the split over threads or the keys
/// beyond its last unmasked one. Float32 throughout, sixteen lanes with AVX-512,
/// eight with AVX2/FMA; split over (sequence, head, row chunk) with
/// parallel_for. Returns (b, heads, n, dv), a view of a (b, n, heads, dv)
/// tensor, or an undefined tensor where it does not apply (then ATen's
/// scaled_dot_product_attention: also past 2^20 key elements a head, 4 MiB
/// of scratch a thread), or while cpu_attention() is ATen's.
/// `avx512` picks a path for tests (undefined where the CPU lacks it).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     bool causal, double scale, std::optional<bool> avx512 = std::nullopt);

/// Who runs attention() on the CPU for the whole process: mpool's kernel (the
/// default) or ATen's scaled_dot_product_attention. The environment variable
/// MPOOL_CPU_ATTENTION ("mpool", "aten") sets it at start-up (another value: an
/// InvalidInput naming it at the first call); set_cpu_attention changes it.
/// Decode steps (one query row, no mask) keep decode_attention either way.
enum class CpuAttention { kMpool = 0, kAten = 1 };
CpuAttention cpu_attention();
void set_cpu_attention(CpuAttention choice);
/// "mpool" or "aten"; another value is an InvalidInput that names `where`.
CpuAttention parse_cpu_attention(std::string_view value, const std::string& where);

/// decode_attention on a chosen path: the AVX-512 row (`avx512`; InvalidInput
/// where the CPU lacks it) or the AVX2 one, for tests that cover both on a CPU
/// that has both. decode_attention picks the widest the CPU has.
at::Tensor decode_attention_with(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                 bool avx512);

/// decode_attention for a batch of sequences of their own lengths: q (b, heads,
/// 1, d) row i against ks[i] (1, kv_heads, t_i, d) and vs[i] (1, kv_heads, t_i,
/// dv), in one parallel_for over every (sequence, head). Row i's result is the
/// bits decode_attention gives for it alone. Undefined where that does not apply.
at::Tensor decode_attention_rows(const at::Tensor& q, const std::vector<at::Tensor>& ks,
                                 const std::vector<at::Tensor>& vs, double scale);

/// decode_attention_rows over paged caches: row i against positions [first[i],
/// total[i]) kept in the blocks *tables[i] of k_blocks (blocks, kv_heads,
/// block_size, d) and v_blocks (blocks, kv_heads, block_size, dv), read where
/// they lie (no gather). The blocks may be float32 or bfloat16 whatever q's
/// dtype (a bfloat16 cache of a float32 model). Row i's result is the bits
/// decode_attention gives for the same keys and values contiguous. Undefined
/// where that does not apply.
at::Tensor decode_attention_paged(const at::Tensor& q, const at::Tensor& k_blocks, const at::Tensor& v_blocks,
                                  const std::vector<const std::vector<int32_t>*>& tables,
                                  const std::vector<int64_t>& first, const std::vector<int64_t>& total, double scale);

/// The attention of a prompt's rows as their decode steps compute it: q (b,
/// heads, n, d) holds the rows of positions start .. start + n - 1, and k (b,
/// kv_heads, start + n, d) and v (b, kv_heads, start + n, dv) the keys and values
/// of every position up to the last; row i attends to positions
/// [max(0, start + i + 1 - window), start + i + 1) (window 0: all of them). Each
/// row's result is the bits decode_attention gives for that row alone against
/// the same keys and values (the decode step of its position), a few rows at a
/// time sharing the loads of each key. Float32 on the CPU, last dimensions
/// contiguous; split over (sequence, head, rows) with parallel_for_beside_torch.
/// Returns (b, heads, n, dv), a view of a (b, n, heads, dv) tensor, or an
/// undefined tensor where it does not apply. `avx512` picks a path for tests
/// (undefined where the CPU lacks it).
at::Tensor prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                            int64_t window, double scale, std::optional<bool> avx512 = std::nullopt);

/// x (m, k) @ w (k, n) with w's rows contiguous (a matrix applied from the
/// left's side, as latent attention's absorbed key map is): each output is
/// summed over k in order with fused multiply-adds, so a row's bits never depend
/// on the other rows, the row count or the instruction set (sixteen columns a
/// lane group with AVX-512, eight with AVX2, one at a time otherwise). Float32
/// on the CPU; undefined where it does not apply.
at::Tensor rows_times(const at::Tensor& x, const at::Tensor& w);

/// Sets the calling thread's torch intra-op thread count to `threads` (>= 1),
/// for this thread only: its OpenMP count and, where torch has MKL, its MKL
/// count. at::set_num_threads would also store the process default that every
/// thread adopts at its first torch op (the user's main thread included), resize
/// the process-wide pthreadpool and drop oneDNN's cache; a replica must not.
/// The thread first adopts that default (torch's lazy per-thread init, in this
/// library's copy of the inline function and in libtorch's), so a later op never
/// re-applies it over `threads`, even after torch.set_num_threads. Without OpenMP in the process it
/// falls back to at::set_num_threads. at::get_num_threads() then returns `threads`.
void set_thread_intra_op_threads(int threads);

/// The most rows linear() runs through its row kernel (batch-invariant).
int64_t row_kernel_max_rows();

/// While alive, torch's own ops on this thread run serially (no OpenMP region:
/// libgomp's idle workers spin after each one, on the cores this library's
/// kernels then want), while parallel_for keeps the thread's count. For the
/// small element-wise ops between a decode step's kernels (a batch's step, where
/// they cost a third of the time in bfloat16 otherwise). Nests; a no-op without
/// OpenMP.
class SerialTorchOps {
 public:
  SerialTorchOps();
  ~SerialTorchOps();
  SerialTorchOps(const SerialTorchOps&) = delete;
  SerialTorchOps& operator=(const SerialTorchOps&) = delete;

 private:
  int saved_ = 0;
};

/// While alive, a row's result does not depend on how many rows share its call
/// or where a chunk of rows starts: float32 and bfloat16 linear() run the row
/// kernel at any row count (in tiles past row_kernel_max_rows(), each row summed
/// in the order it has alone) and int8's auto path its row kernel. With `prompt` (a prompt's
/// chunks through a decoder), a chunk of one row also runs as a chunk, and a
/// decoder's prompt rows attend as their decode steps would
/// (prompt_attention). So a prompt computed in any chunks (a prefix read from
/// the cache and the rest computed, or all of it at once) gives the same bits,
/// and so does a cached block that decode steps wrote (a conversation's earlier
/// answer). Nests (the innermost wins).
class RowInvariant {
 public:
  explicit RowInvariant(bool prompt = false);
  ~RowInvariant();
  RowInvariant(const RowInvariant&) = delete;
  RowInvariant& operator=(const RowInvariant&) = delete;

 private:
  int saved_ = 0;
};

/// Whether a RowInvariant scope is active on this thread; and one with `prompt`.
bool row_invariant() noexcept;
bool prompt_rows() noexcept;

/// Whether linear() has its fast path on this CPU.
bool has_fast_gemv();

}  // namespace mpool::nn::kernels
