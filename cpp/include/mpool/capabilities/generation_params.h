#pragma once
// The values each generation parameter accepts, written once. Native models check
// a request with validate_generation_params(); the bindings hand the same table to
// the Python layer, which checks arguments with it before anything is queued, so
// both sides accept and refuse the same values with the same words.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "mpool/capabilities/types.h"

namespace mpool::capabilities {

/// What kind of value a generation parameter takes.
enum class GenerationParamKind {
  kInteger,      ///< an integer in [min_int, max_int]
  kReal,         ///< a finite number within lo/hi (each end open, closed or absent)
  kFlag,         ///< true or false
  kStopStrings,  ///< a list of non-empty strings
  kTokenIds,     ///< a list of integers, each in [min_int, max_int]
};

/// One generation parameter (a field of GenerationParams) and the values it accepts.
struct GenerationParamRule {
  /// The field's name, as requests spell it ("top_p").
  std::string_view name;
  /// What kind of value it takes.
  GenerationParamKind kind;
  /// kInteger, kTokenIds: the smallest accepted value.
  std::int64_t min_int = 0;
  /// kInteger, kTokenIds: the largest accepted value.
  std::uint64_t max_int = 0;
  /// kReal: the lower bound, if any.
  std::optional<double> lo;
  /// kReal: the upper bound, if any.
  std::optional<double> hi;
  /// kReal: lo itself is refused.
  bool lo_open = false;
  /// kReal: hi itself is refused.
  bool hi_open = false;
};

/// Every generation parameter, in GenerationParams' order.
std::span<const GenerationParamRule> generation_param_rules();

/// The rule of `name`; Error(kInternal) when no parameter has that name.
const GenerationParamRule& generation_param_rule(std::string_view name);

/// What `rule` accepts, as messages say it: "an int in [1, 2147483647]", "a finite
/// number in (0, 1]", "a finite number >= 0", "True or False", ... The Python layer
/// words its messages the same way.
std::string describe(const GenerationParamRule& rule);

/// Checks every field of `params` against the table: InvalidInput naming the
/// parameter, what it accepts and the value ("top_p must be a finite number in
/// (0, 1], got 1.5"; "stop[0] must be a non-empty str").
void validate_generation_params(const GenerationParams& params);

}  // namespace mpool::capabilities
