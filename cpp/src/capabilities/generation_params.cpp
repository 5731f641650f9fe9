#include "mpool/capabilities/generation_params.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "mpool/base/error.h"

namespace mpool::capabilities {
namespace {

using Kind = GenerationParamKind;

// Counts are int64 in C++ but bounded at 2^31 - 1: nothing sane asks for more.
constexpr std::int64_t kInt32Max = std::numeric_limits<std::int32_t>::max();
constexpr std::int64_t kInt64Min = std::numeric_limits<std::int64_t>::min();
constexpr std::uint64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::uint64_t kUint64Max = std::numeric_limits<std::uint64_t>::max();

// In GenerationParams' order.
constexpr GenerationParamRule kRules[] = {
    {.name = "max_tokens", .kind = Kind::kInteger, .min_int = 1, .max_int = kInt32Max},
    {.name = "temperature", .kind = Kind::kReal, .lo = 0.0},  // 0 = greedy
    {.name = "top_k", .kind = Kind::kInteger, .min_int = 0, .max_int = kInt32Max},  // 0 disables it
    {.name = "top_p", .kind = Kind::kReal, .lo = 0.0, .hi = 1.0, .lo_open = true},
    {.name = "min_p", .kind = Kind::kReal, .lo = 0.0, .hi = 1.0},
    {.name = "repetition_penalty", .kind = Kind::kReal, .lo = 0.0, .lo_open = true},
    {.name = "presence_penalty", .kind = Kind::kReal},
    {.name = "frequency_penalty", .kind = Kind::kReal},
    {.name = "seed", .kind = Kind::kInteger, .min_int = 0, .max_int = kUint64Max},  // uint64 in C++
    {.name = "stop", .kind = Kind::kStopStrings},
    {.name = "stop_token_ids", .kind = Kind::kTokenIds, .min_int = kInt64Min, .max_int = kInt64Max},
    {.name = "ignore_eos", .kind = Kind::kFlag},
    {.name = "logprobs", .kind = Kind::kInteger, .min_int = 0, .max_int = 20},
    {.name = "add_special_tokens", .kind = Kind::kFlag},
};

// A bound as Python's "{:g}" writes it (both use C's %g).
std::string bound(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A refused value, shortest form that reads back exactly ("1.5", "nan", "inf").
std::string shown(double v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : bound(v);
}

std::string int_range(const GenerationParamRule& r) {
  return "an int in [" + std::to_string(r.min_int) + ", " + std::to_string(r.max_int) + "]";
}

bool in_range(const GenerationParamRule& r, std::int64_t v) {
  return v >= r.min_int && (v < 0 || static_cast<std::uint64_t>(v) <= r.max_int);
}

bool in_range(const GenerationParamRule& r, std::uint64_t v) {
  return (r.min_int <= 0 || v >= static_cast<std::uint64_t>(r.min_int)) && v <= r.max_int;
}

const GenerationParamRule& rule_of(std::string_view name, Kind kind) {
  const GenerationParamRule& r = generation_param_rule(name);
  if (r.kind != kind)
    throw Error(ErrorCode::kInternal,
                "generation parameter '" + std::string(name) + "' is checked as another kind than its table entry");
  return r;
}

[[noreturn]] void refuse(const std::string& name, const std::string& what, const std::string& got) {
  throw Error(ErrorCode::kInvalidInput, name + " must be " + what + ", got " + got);
}

template <typename Int>
void check_integer(std::string_view name, Int v) {
  const GenerationParamRule& r = rule_of(name, Kind::kInteger);
  if (!in_range(r, v)) refuse(std::string(name), describe(r), std::to_string(v));
}

void check_real(std::string_view name, double v) {
  const GenerationParamRule& r = rule_of(name, Kind::kReal);
  const bool ok = std::isfinite(v) && (!r.lo || (r.lo_open ? v > *r.lo : v >= *r.lo)) &&
                  (!r.hi || (r.hi_open ? v < *r.hi : v <= *r.hi));
  if (!ok) refuse(std::string(name), describe(r), shown(v));
}

void check_stop_strings(std::string_view name, const std::vector<std::string>& stop) {
  rule_of(name, Kind::kStopStrings);
  for (std::size_t i = 0; i < stop.size(); ++i)
    if (stop[i].empty())
      throw Error(ErrorCode::kInvalidInput, std::string(name) + "[" + std::to_string(i) + "] must be a non-empty str");
}

void check_token_ids(std::string_view name, const std::vector<std::int64_t>& ids) {
  const GenerationParamRule& r = rule_of(name, Kind::kTokenIds);
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (!in_range(r, ids[i]))
      refuse(std::string(name) + "[" + std::to_string(i) + "]", int_range(r), std::to_string(ids[i]));
}

}  // namespace

std::span<const GenerationParamRule> generation_param_rules() { return kRules; }

const GenerationParamRule& generation_param_rule(std::string_view name) {
  for (const GenerationParamRule& r : kRules)
    if (r.name == name) return r;
  throw Error(ErrorCode::kInternal, "no generation parameter is called '" + std::string(name) + "'");
}

std::string describe(const GenerationParamRule& r) {
  switch (r.kind) {
    case Kind::kInteger:
      return int_range(r);
    case Kind::kReal:
      if (r.lo && r.hi)
        return std::string("a finite number in ") + (r.lo_open ? "(" : "[") + bound(*r.lo) + ", " + bound(*r.hi) +
               (r.hi_open ? ")" : "]");
      if (r.lo) return std::string("a finite number ") + (r.lo_open ? "> " : ">= ") + bound(*r.lo);
      if (r.hi) return std::string("a finite number ") + (r.hi_open ? "< " : "<= ") + bound(*r.hi);
      return "a finite number";
    case Kind::kFlag:
      return "True or False";
    case Kind::kStopStrings:
      return "a non-empty string or a list of them";
    case Kind::kTokenIds:
      return "a list of int token ids";
  }
  throw Error(ErrorCode::kInternal, "unknown generation parameter kind");
}

void validate_generation_params(const GenerationParams& p) {
  check_integer("max_tokens", p.max_tokens);
  check_real("temperature", p.temperature);
  if (p.top_k) check_integer("top_k", *p.top_k);
  if (p.top_p) check_real("top_p", *p.top_p);
  if (p.min_p) check_real("min_p", *p.min_p);
  check_real("repetition_penalty", p.repetition_penalty);
  check_real("presence_penalty", p.presence_penalty);
  check_real("frequency_penalty", p.frequency_penalty);
  if (p.seed) check_integer("seed", *p.seed);
  check_stop_strings("stop", p.stop);
  check_token_ids("stop_token_ids", p.stop_token_ids);
  rule_of("ignore_eos", Kind::kFlag);  // any bool
  if (p.logprobs) check_integer("logprobs", *p.logprobs);
  rule_of("add_special_tokens", Kind::kFlag);  // any bool
}

}  // namespace mpool::capabilities
