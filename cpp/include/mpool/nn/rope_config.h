#pragma once
// Rotary position embedding settings, read from config.json in one place for
// every family. Torch-free: the config readers use it, and it is fuzzed with them.
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mpool/loading/config.h"

namespace mpool::nn {

/// Every rope type transformers defines for decoders, read from `rope_parameters`
/// (transformers 5) or `rope_scaling` (older files): see loading::rope_parameters_node.
struct RopeConfig {
  std::string type = "default";  ///< default, linear, dynamic, yarn, llama3, longrope
  double theta = 10000.0;
  int64_t rotary_dim = 0;  ///< rotated part of each head (head_dim x partial_rotary_factor)
  double factor = 1.0;
  int64_t max_position_embeddings = 0;
  int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;   ///< llama3
  double high_freq_factor = 4.0;  ///< llama3
  std::vector<double> short_factor, long_factor;  ///< longrope, rotary_dim / 2 each
  /// Scales cos and sin (longrope and yarn; 1 otherwise).
  double attention_factor = 1.0;
  double beta_fast = 32.0;  ///< yarn: rotations where extrapolation ends
  double beta_slow = 1.0;   ///< yarn: rotations where interpolation starts
  bool truncate = true;     ///< yarn: round the correction range outwards
  /// yarn's mscale_all_dim (DeepSeek's MLA folds it into the softmax scale); 0 when absent.
  double mscale_all_dim = 0.0;

  /// The factor MLA multiplies its softmax scale by: yarn's mscale at
  /// mscale_all_dim, squared, for a scaled rope that sets it; 1 otherwise.
  double softmax_scale_correction() const;
  /// Whether inv_freq depends on the sequence length (dynamic, longrope).
  bool depends_on_length() const noexcept { return type == "dynamic" || type == "longrope"; }
  /// The longest sequence whose positions all rotate as they would in any
  /// shorter one: dynamic's max_position_embeddings, longrope's original length,
  /// else unbounded.
  int64_t length_independent_positions() const noexcept {
    if (type == "dynamic") return max_position_embeddings;
    if (type == "longrope") return original_max_position_embeddings;
    return std::numeric_limits<int64_t>::max();
  }
};

/// What a family's modeling code makes of the shared rope keys: transformers'
/// families differ.
struct RopeRules {
  /// Rotates head_dim x partial_rotary_factor of each head (phi3). Otherwise a
  /// default rope rotates whole heads whatever the key says (as transformers'
  /// llama, mistral and qwen do), and a scaled rope with a factor below 1 is
  /// refused (transformers computes a shorter table those families cannot apply).
  bool partial_rotary = true;
  /// Reads rope type "yarn" as longrope, as Phi3Config renames it for old files
  /// ("su" is always longrope).
  bool yarn_is_longrope = false;
  /// A scaled rope's original_max_position_embeddings when config.json has no
  /// top-level key: Phi3Config's class default (4096) where the family's config
  /// class has one, else the rope node's, else max_position_embeddings. A
  /// top-level key always wins over the node's (transformers' standardize_rope_params).
  std::optional<int64_t> original_max_default;
};

/// Reads the rope settings of a model with heads of `head_dim` and
/// `max_position_embeddings` positions; errors name config.json and the key.
RopeConfig read_rope_config(const loading::ModelConfig& config, int64_t head_dim, int64_t max_position_embeddings,
                            const RopeRules& rules = {});

}  // namespace mpool::nn
