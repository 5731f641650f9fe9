// Probes of the nn blocks (probe.h): each runs one block on the caller's tensors
// so that tests can compare it with the torch / transformers / diffusers code it
// reproduces. Blocks with weights read them from a safetensors file the test
// wrote ("checkpoint", with an optional "prefix").
#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <optional>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"
#include "mpool/loading/tensors.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/int8.h"
#include "mpool/nn/kernels.h"
#include "mpool/nn/kv_cache.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/probe.h"
#include "mpool/nn/rope.h"

namespace mpool::nn {
namespace {

RopeLayout layout_of(const ProbeInput& in) {
  const auto name = in.get_or<std::string>("layout", "rotate_half");
  if (name == "rotate_half") return RopeLayout::kRotateHalf;
  check(name == "interleaved", ErrorCode::kInvalidInput, "layout must be rotate_half or interleaved");
  return RopeLayout::kInterleaved;
}

// Option "repeat" (benchmarks): runs `call` that many more times and returns
// the seconds per call as a scalar (0 without the option).
template <class F>
at::Tensor seconds_per_call(const ProbeInput& in, F&& call) {
  const int64_t repeat = in.get_or<int64_t>("repeat", 0);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < repeat; ++i) (void)call();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return at::scalar_tensor(repeat > 0 ? seconds / static_cast<double>(repeat) : 0.0, at::kDouble);
}

void register_all() {
  // inv_freq and attention factor of a config.json (given as an object), as
  // transformers' ROPE_INIT_FUNCTIONS compute them for a sequence of seq_len.
  register_probe("nn.rope_inv_freq", [](const ProbeInput& in) {
    const loading::ModelConfig config =
        loading::parse_model_config(loading::parse_json_object(in.options.at("config").dump(), "config.json"));
    const RopeConfig rope = read_rope_config(config, in.get<int64_t>("head_dim"),
                                             in.get<int64_t>("max_position_embeddings"));
    auto [inv, factor] = rope_inv_freq(rope, in.get_or<int64_t>("seq_len", 0));
    return ProbeOutput{{"inv_freq", inv}, {"attention_factor", at::scalar_tensor(factor, at::kDouble)}};
  });
  register_probe("nn.rope_apply", [](const ProbeInput& in) {
    const RopeLayout layout = layout_of(in);
    auto [cos, sin] = rope_tables(in.tensor("positions").to(at::kFloat), in.tensor("inv_freq"),
                                  in.get_or<double>("scale", 1.0), layout);
    return ProbeOutput{{"out", apply_rope(in.tensor("x"), cos, sin, layout)}, {"cos", cos}, {"sin", sin}};
  });
  register_probe("nn.multi_axis_rope", [](const ProbeInput& in) {
    auto [cos, sin] = multi_axis_rope_tables(in.tensor("positions"), in.get<std::vector<int64_t>>("axes_dims"),
                                             in.get<double>("theta"));
    ProbeOutput out{{"cos", cos}, {"sin", sin}};
    if (in.tensors.count("x")) {
      // "x_dtype": x is rotated in that dtype (the float32 tables stay float32).
      const std::string name = in.get_or<std::string>("x_dtype", "float32");
      const auto dtype = loading::parse_scalar_type(name);
      check(dtype.has_value(), ErrorCode::kInvalidInput, "unknown x_dtype '" + name + "'");
      out["out"] = apply_rope(in.tensor("x").to(*dtype), cos, sin, RopeLayout::kInterleaved);
    }
    return out;
  });
  register_probe("nn.activation", [](const ProbeInput& in) {
    return ProbeOutput{
        {"out", activate(parse_activation(in.get<std::string>("name"), "probe"), in.tensor("x"))}};
  });
  // Option "dtype": x and the weight in that dtype (default float32); "out" is float32.
  register_probe("nn.rms_norm", [](const ProbeInput& in) {
    const std::string name = in.get_or<std::string>("dtype", "float32");
    const auto dtype = loading::parse_scalar_type(name);
    check(dtype.has_value(), ErrorCode::kInvalidInput, "unknown dtype '" + name + "'");
    RMSNorm n{in.tensor("weight").to(*dtype), in.get<double>("eps"), in.get_or<bool>("unit_offset", false)};
    return ProbeOutput{{"out", n(in.tensor("x").to(*dtype)).to(at::kFloat)}};
  });
  register_probe("nn.layer_norm", [](const ProbeInput& in) {
    LayerNorm n{in.tensor("weight"), in.optional_tensor("bias"),
                in.get<double>("eps")};
    return ProbeOutput{{"out", n(in.tensor("x"))}};
  });
  register_probe("nn.group_norm", [](const ProbeInput& in) {
    const Weights w = in.weights();
    const at::Tensor& x = in.tensor("x");
    GroupNorm n = GroupNorm::load(w, in.get<std::string>("name"), in.get<int64_t>("groups"), x.size(1),
                                  in.get<double>("eps"), in.get_or<bool>("affine", true));
    return ProbeOutput{{"out", n(x)}};
  });
  // int8 weight-only linear: "weight" (out, in) quantized per row, applied to
  // "x" with an optional "bias"; option "isa" ("auto", "scalar", "avx2",
  // "avx2_int16", "avx512", "avx512_vnni") picks the row kernel and "path"
  // ("auto", "rows", "gemm") the path. Returns y, the q and scales it used, and
  // what the CPU has: "isa" (0 scalar, 1 avx2, 2 avx2_int16, 3 avx512,
  // 4 avx512_vnni: the best), "bf16_gemm" (1 when the many-row path splits into
  // bf16 GEMMs) and "rows_max" (rows the auto path gives the row kernel).
  register_probe("nn.linear_int8", [](const ProbeInput& in) {
    const int8::Quantized w = int8::quantize_rows(in.tensor("weight"), "probe tensor 'weight'");
    const std::string isa_name = in.get_or<std::string>("isa", "auto");
    const std::string path_name = in.get_or<std::string>("path", "auto");
    int8::Isa isa = int8::best_isa();
    if (isa_name != "auto") {
      if (isa_name == "scalar") isa = int8::Isa::kScalar;
      else if (isa_name == "avx2") isa = int8::Isa::kAvx2;
      else if (isa_name == "avx2_int16") isa = int8::Isa::kAvx2Int16;
      else if (isa_name == "avx512") isa = int8::Isa::kAvx512;
      else if (isa_name == "avx512_vnni") isa = int8::Isa::kAvx512Vnni;
      else
        throw Error(ErrorCode::kInvalidInput,
                    "probe option 'isa' is not auto, scalar, avx2, avx2_int16, avx512 or avx512_vnni");
    }
    int8::Path path = int8::Path::kAuto;
    if (path_name == "rows") path = int8::Path::kRows;
    else if (path_name == "gemm") path = int8::Path::kGemm;
    else check(path_name == "auto", ErrorCode::kInvalidInput, "probe option 'path' is not auto, rows or gemm");
    const at::Tensor bias = in.optional_tensor("bias");
    const at::Tensor x = in.tensor("x"), b = bias.defined() ? bias.to(at::kFloat) : bias;
    const at::Tensor y = int8::linear_with(x, w, b, isa, path);
    return ProbeOutput{{"y", y},
                       {"seconds", seconds_per_call(in, [&] { return int8::linear_with(x, w, b, isa, path); })},
                       {"q", w.q},
                       {"scales", w.scales},
                       {"isa", at::scalar_tensor(static_cast<int64_t>(int8::best_isa()), at::kLong)},
                       {"bf16_gemm", at::scalar_tensor(static_cast<int64_t>(int8::has_bf16_gemm()), at::kLong)},
                       {"rows_max", at::scalar_tensor(int8::rows_kernel_max_rows(), at::kLong)}};
  });
  // kernels::linear: "x" (..., in) @ "weight" (out, in)^T (+ optional "bias"),
  // all taken as option "dtype" (default float32); up to row_kernel_max_rows()
  // rows on the CPU run the row kernel. With option "act" (an activation name)
  // or a "residual" tensor: Linear's act(x W^T + b) + residual, fused where
  // gemm.h can. Returns "y" as float32. Option "repeat" (benchmarks, plain
  // products only): that many more calls, timed; "seconds" per call.
  // kernels::parallel_for_beside_torch over option "n" items, one a chunk: each
  // item's at::get_thread_num() (torch's id of the team thread that ran it;
  // 0 on any thread outside at::parallel_for) and "threads", this thread's
  // torch intra-op count.
  register_probe("nn.parallel_for_beside_torch", [](const ProbeInput& in) {
    const int64_t n = in.get<int64_t>("n");
    check(n >= 1 && n <= 4096, ErrorCode::kInvalidInput, "probe option 'n' must be 1 to 4096");
    at::Tensor ids = at::full({n}, -1, at::kLong);
    int64_t* p = ids.data_ptr<int64_t>();
    kernels::parallel_for_beside_torch(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p[i] = at::get_thread_num();
    });
    return ProbeOutput{{"thread_ids", ids},
                       {"threads", at::scalar_tensor(static_cast<int64_t>(at::get_num_threads()), at::kLong)}};
  });
  register_probe("nn.linear", [](const ProbeInput& in) {
    const std::string name = in.get_or<std::string>("dtype", "float32");
    const auto dtype = loading::parse_scalar_type(name);
    check(dtype.has_value(), ErrorCode::kInvalidInput, "probe option 'dtype' is not a dtype");
    const at::Tensor bias = in.optional_tensor("bias"), residual = in.optional_tensor("residual");
    const at::Tensor x = in.tensor("x").to(*dtype), weight = in.tensor("weight").to(*dtype).contiguous();
    const at::Tensor b = bias.defined() ? bias.to(*dtype) : bias;
    // Option row_invariant (bool): under kernels::RowInvariant, as a prompt's chunks run.
    std::optional<kernels::RowInvariant> invariant;
    if (in.get_or<bool>("row_invariant", false)) invariant.emplace();
    if (!in.options.contains("act") && !residual.defined())
      return ProbeOutput{{"y", kernels::linear(x, weight, b).to(at::kFloat)},
                         {"seconds", seconds_per_call(in, [&] { return kernels::linear(x, weight, b); })}};
    Linear l;
    l.weight = weight;
    l.bias = b;
    std::optional<Activation> act;
    if (in.options.contains("act")) act = parse_activation(in.get<std::string>("act"), "probe");
    const at::Tensor y = l(x, act, residual.defined() ? residual.to(*dtype) : residual);
    return ProbeOutput{{"y", y.to(at::kFloat)}};
  });
  register_probe("nn.mlp", [](const ProbeInput& in) {
    const Weights w = in.weights();
    MlpNames names;
    names.up = in.get_or<std::string>("up", names.up);
    names.gate = in.get_or<std::string>("gate", names.gate);
    names.down = in.get_or<std::string>("down", names.down);
    // Optional "weights_dtype" (the view's, and x's) and "down_dtype" (the down projection's).
    const auto dtype_of = [&](const std::string& option) -> std::optional<at::ScalarType> {
      if (!in.options.contains(option)) return std::nullopt;
      const auto t = loading::parse_scalar_type(in.get<std::string>(option));
      check(t.has_value(), ErrorCode::kInvalidInput, "probe option '" + option + "' is not a dtype");
      return t;
    };
    const std::optional<at::ScalarType> dtype = dtype_of("weights_dtype");
    Mlp m = Mlp::load(dtype ? w.as(*dtype) : w, in.get<int64_t>("hidden"), in.get<int64_t>("inner"),
                      parse_activation(in.get<std::string>("act"), "probe"), in.get<bool>("gated"),
                      in.get<bool>("bias"), names, dtype_of("down_dtype"));
    const at::Tensor& x = in.tensor("x");
    return ProbeOutput{{"out", m(dtype ? x.to(*dtype) : x)}};
  });
  // Attention with projections; masks: "causal" (bool), "window" (int), an
  // optional (b, t) "key_mask" and an additive "bias" (b|1, heads, n, t); an
  // optional "scale" of the scores.
  register_probe("nn.attention", [](const ProbeInput& in) {
    const Weights w = in.weights();
    AttentionShape shape;
    shape.hidden = in.get<int64_t>("hidden");
    shape.heads = in.get<int64_t>("heads");
    shape.kv_heads = in.get_or<int64_t>("kv_heads", 0);
    shape.head_dim = in.get<int64_t>("head_dim");
    shape.kv_input = in.get_or<int64_t>("kv_input", 0);
    shape.qkv_bias = in.get_or<bool>("qkv_bias", false);
    shape.o_bias = in.get_or<bool>("o_bias", false);
    if (in.options.contains("scale")) shape.scale = in.get<double>("scale");
    const std::optional<double> qk_norm =
        in.options.contains("qk_norm_eps") ? std::optional<double>(in.get<double>("qk_norm_eps")) : std::nullopt;
    Attention a = Attention::load(w, shape, {}, qk_norm);
    const at::Tensor& x = in.tensor("x");
    const int64_t n = x.size(1);
    const at::Tensor context = in.optional_tensor("context");
    const int64_t t = context.defined() ? context.size(1) : n;
    at::Tensor keep;
    const bool causal = in.get_or<bool>("causal", false);
    const int64_t window = in.get_or<int64_t>("window", 0);
    if (causal && (window > 0 || in.tensors.count("key_mask") || in.tensors.count("bias")))
      keep = causal_mask(0, n, t, window, x.device());
    if (in.tensors.count("key_mask")) {
      at::Tensor pad = key_padding_mask(in.tensor("key_mask"));
      keep = keep.defined() ? keep.logical_and(pad) : pad;
    }
    at::Tensor mask = keep;
    if (in.tensors.count("bias")) mask = additive_mask(keep, in.tensor("bias"), x.scalar_type());
    return ProbeOutput{{"out", a(x, mask, causal && !mask.defined(), context)}};
  });
  // nn::attend on raw (b, heads, n, d) q and (b, kv_heads, t, d|dv) k, v: options
  // "causal", "scale", "dtype" (inputs cast to it), "length" (k and v narrowed to
  // their first `length` rows, a strided view as a KV cache hands out), an
  // optional "mask" tensor (boolean or additive, broadcastable to (b, heads, n,
  // t)). Option "path": "aten" runs ATen's scaled_dot_product_attention, "rows"
  // kernels::attention (with "isa", that path), "prompt" kernels::prompt_attention
  // (q the last n positions of k and v; option "window", default 0). Option
  // "repeat" times that many more runs ("seconds", per run). Out: "out" (float32)
  // and "kernel", 1 when one of mpool's kernels ran it (the decode-step one,
  // kernels::attention or kernels::prompt_attention).
  register_probe("nn.attend", [](const ProbeInput& in) {
    const std::string name = in.get_or<std::string>("dtype", "float32");
    const auto dtype = loading::parse_scalar_type(name);
    check(dtype.has_value(), ErrorCode::kInvalidInput, "unknown dtype '" + name + "'");
    const at::Tensor q = in.tensor("q").to(*dtype);
    at::Tensor k = in.tensor("k").to(*dtype), v = in.tensor("v").to(*dtype);
    if (in.options.contains("length")) {
      const int64_t length = in.get<int64_t>("length");
      k = k.narrow(2, 0, length);
      v = v.narrow(2, 0, length);
    }
    const std::optional<double> scale =
        in.options.contains("scale") ? std::optional<double>(in.get<double>("scale")) : std::nullopt;
    const bool causal = in.get_or<bool>("causal", false);
    // Option "isa": "avx2" or "avx512" runs the kernel on that path (default: the widest).
    const std::string isa = in.get_or<std::string>("isa", "");
    check(isa.empty() || isa == "avx2" || isa == "avx512", ErrorCode::kInvalidInput, "isa must be avx2 or avx512");
    const double s = scale ? *scale : 1.0 / std::sqrt(double(q.size(3)));
    at::Tensor mask = in.optional_tensor("mask");  // integers (booleans arrive as int64): true = attend
    if (mask.defined()) mask = at::isFloatingType(mask.scalar_type()) ? mask.to(*dtype) : mask.to(at::kBool);
    const std::string path = in.get_or<std::string>("path", "");
    check(path.empty() || path == "aten" || path == "rows" || path == "prompt", ErrorCode::kInvalidInput,
          "path must be aten, rows or prompt");
    const int64_t window = in.get_or<int64_t>("window", 0);
    check(window >= 0, ErrorCode::kInvalidInput,
          "probe option 'window' must be 0 (no window) or a positive number of positions, got " +
              std::to_string(window));
    if (!path.empty()) {
      const std::optional<bool> wide = isa.empty() ? std::nullopt : std::optional<bool>(isa == "avx512");
      auto run = [&] {
        if (path == "aten")
          return at::scaled_dot_product_attention(q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
                                                  0.0, causal && !mask.defined(), s, k.size(1) != q.size(1));
        at::Tensor out = path == "prompt" ? kernels::prompt_attention(q, k, v, k.size(2) - q.size(2), window, s, wide)
                                          : kernels::attention(q, k, v, mask, causal && !mask.defined(), s, wide);
        check(out.defined(), ErrorCode::kInvalidInput, "kernels::" + std::string(path == "prompt" ? "prompt_" : "") +
                                                           "attention does not take these inputs");
        return out;
      };
      at::Tensor out = run();
      return ProbeOutput{{"out", out.to(at::kFloat).contiguous()},
                         {"kernel", at::scalar_tensor(path == "aten" ? 0 : 1, at::kInt)},
                         {"seconds", seconds_per_call(in, run)}};
    }
    const at::Tensor kernel = q.size(2) != 1 ? at::Tensor()
                              : isa.empty()  ? kernels::decode_attention(q, k, v, s)
                                             : kernels::decode_attention_with(q, k, v, s, isa == "avx512");
    if (!isa.empty() && kernel.defined())  // the chosen path's output, not attend()'s
      return ProbeOutput{{"out", kernel.to(at::kFloat)}, {"kernel", at::scalar_tensor(1, at::kInt)}};
    const bool rows = !kernel.defined() && kernels::attention(q, k, v, mask, causal && !mask.defined(), s).defined();
    return ProbeOutput{{"out", attend(q, k, v, mask, causal, scale).to(at::kFloat)},
                       {"kernel", at::scalar_tensor(kernel.defined() || rows ? 1 : 0, at::kInt)}};
  });
  // The paged KV cache with prefix sharing, on "keys" and "values" (kv_heads, t,
  // d) and "new_key"/"new_value" (kv_heads, 1, d). Sequence A writes all t
  // positions (chunks of option "chunk") into blocks of option "block_size" (of
  // option "blocks") and publishes its full blocks under token ids 0..t-1.
  // Sequence B matches those ids, shares the blocks of all but the last position
  // and writes the new key and value at position t - 1. Out: each one's cache
  // read back ("a_keys", "a_values", "b_keys", "b_values"), their tables, and
  // the pool's counts with both held ("held_in_use") and after both are gone
  // ("in_use", "cached", "available").
  register_probe("nn.paged_kv_cache", [](const ProbeInput& in) {
    const at::Tensor keys = in.tensor("keys").unsqueeze(0), values = in.tensor("values").unsqueeze(0);
    const int64_t kvh = keys.size(1), t = keys.size(2), d = keys.size(3);
    const int64_t bs = in.get<int64_t>("block_size"), chunk = in.get_or<int64_t>("chunk", t);
    auto pool = KvBlockPool::key_value(1, kvh, d, bs, in.get<int64_t>("blocks"), keys.options());
    std::vector<int64_t> ids(static_cast<size_t>(t));
    for (int64_t i = 0; i < t; ++i) ids[static_cast<size_t>(i)] = i;
    ProbeOutput out;
    auto table_of = [](const KvCache& c) {
      std::vector<int64_t> b(c.table.blocks().begin(), c.table.blocks().end());
      return at::tensor(b, at::kLong);
    };
    {
      KvCache a = KvCache::paged_in(pool, t);
      for (int64_t at = 0; at < t; at += chunk) {
        const int64_t n = std::min(chunk, t - at);
        a.append(0, at, keys.narrow(2, at, n), values.narrow(2, at, n));
        a.length = at + n;
      }
      KvBlockPool::Link link;
      for (int64_t b = 0; (b + 1) * bs <= t; ++b) link = pool->publish(link, a.table.blocks()[b], ids.data() + b * bs);
      const std::vector<int32_t> matched = pool->match(ids.data(), t);
      KvCache b = KvCache::paged_in(pool, t);
      b.table.share(matched);
      b.length = std::min<int64_t>(static_cast<int64_t>(matched.size()) * bs, t - 1);
      if (b.length < t - 1) {  // B's own positions before the last: A's values
        const int64_t from = b.length, n = t - 1 - from;
        b.append(0, from, keys.narrow(2, from, n), values.narrow(2, from, n));
      }
      auto [bk, bv] = b.append(0, t - 1, in.tensor("new_key").unsqueeze(0), in.tensor("new_value").unsqueeze(0));
      const LayerCache& storage = pool->layer(0);
      auto read = [&](const KvCache& c, const at::Tensor& st) {
        std::vector<at::Tensor> parts;
        for (int32_t blk : c.table.blocks()) parts.push_back(st.select(0, blk));
        return at::cat(parts, 1).narrow(1, 0, t);
      };
      out["a_keys"] = read(a, storage.keys);
      out["a_values"] = read(a, storage.values);
      out["b_keys"] = bk.squeeze(0);
      out["b_values"] = bv.squeeze(0);
      out["a_table"] = table_of(a);
      out["b_table"] = table_of(b);
      out["matched"] = at::scalar_tensor(static_cast<int64_t>(matched.size()), at::kLong);
      if (const at::Tensor q = in.optional_tensor("q"); q.defined()) {
        // B's decode row over positions [first, t): read in its blocks, and gathered.
        const int64_t first = in.get_or<int64_t>("first", 0);
        b.length = t - 1;  // as in a decode step: position t - 1 written, not yet counted
        out["attend_in_blocks"] = attend_rows(q, std::vector<const KvCache*>{&b}, 0, {first});
        auto [k, v] = b.read(0, first, t);
        out["attend_gathered"] = attend_rows(q, std::vector<at::Tensor>{k}, std::vector<at::Tensor>{v});
      }
      out["held_in_use"] = at::scalar_tensor(pool->in_use(), at::kLong);
    }
    out["in_use"] = at::scalar_tensor(pool->in_use(), at::kLong);
    out["cached"] = at::scalar_tensor(pool->cached(), at::kLong);
    out["available"] = at::scalar_tensor(pool->available(), at::kLong);
    return out;
  });
  // A renamed view: option "names" maps an asked name to {"stored": name,
  // "rows": [[begin, end], ...]}; option "get" lists [name, shape] to read through
  // it (on option "device", "cpu" or "meta"). Out: each tensor by its asked name
  // (meta: its shape as a tensor) and "bytes_taken".
  register_probe("nn.weights_renamed", [](const ProbeInput& in) {
    const nlohmann::json names = in.get<nlohmann::json>("names");
    const bool meta = in.get_or<std::string>("device", "cpu") == "meta";
    const Weights file = in.weights();
    // Option "int8": the view quantizes linear weights; each name is then read
    // as a linear weight and returned dequantized.
    const bool int8 = in.get_or<bool>("int8", false);
    const Weights base =
        (meta ? Weights::open(file.checkpoint(), at::kFloat, at::Device(at::kMeta), file.prefix()) : file)
            .with_int8_linears(int8);
    const Weights w = base.renamed([names](std::string_view asked) -> std::optional<StoredName> {
      const auto it = names.find(std::string(asked));
      if (it == names.end()) return std::nullopt;
      StoredName s{it->at("stored").get<std::string>(), false, {}};
      for (const auto& r : it->value("rows", nlohmann::json::array()))
        s.rows.emplace_back(r.at(0).get<int64_t>(), r.at(1).get<int64_t>());
      return s;
    });
    ProbeOutput out;
    for (const auto& item : in.get<nlohmann::json>("get")) {
      const std::string name = item.at(0).get<std::string>();
      const Shape shape = item.at(1).get<Shape>();
      at::Tensor t;
      if (int8) {
        const LinearWeight lw = w.linear_weight(name, shape);
        t = meta ? lw.int8.q : int8::dequantize(lw.int8);
      } else {
        t = w.get(name, shape);
      }
      out[name] = meta ? at::tensor(t.sizes().vec(), at::kLong) : t;
    }
    out["bytes_taken"] = at::scalar_tensor(static_cast<int64_t>(w.bytes_taken()), at::kLong);
    return out;
  });
}

}  // namespace

void register_block_probes() {
  static std::once_flag once;
  std::call_once(once, [] { register_all(); register_position_and_conv_probes(); });
}

}  // namespace mpool::nn
