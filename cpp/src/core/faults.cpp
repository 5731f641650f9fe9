#include "mpool/core/faults.h"

#include <array>
#include <cmath>
#include <mutex>

#include "mpool/core/clock.h"
#include "mpool/base/error.h"

namespace mpool::core::faults {
namespace {

constexpr std::array<const char*, kFaultKinds> kNames = {
    "loader_throws", "forward_throws", "out_of_memory", "replica_dies",
    "thread_create_fails", "slow_load", "consumer_stalls", "clock_jump", "cancel_at_layer"};

struct Armed {
  int shots = 0;
  std::string key;
  double seconds = 0;
};

std::mutex& mu() {
  static std::mutex m;
  return m;
}
std::array<Armed, kFaultKinds>& table() {  // guarded by mu()
  static std::array<Armed, kFaultKinds> t;
  return t;
}
std::array<std::atomic<long>, kFaultKinds>& counters() {
  static std::array<std::atomic<long>, kFaultKinds> c{};
  return c;
}
thread_local const std::string* tls_model = nullptr;

}  // namespace

namespace detail {
std::atomic<int> armed_count{0};

bool take(Fault fault, const std::string* key, double* seconds) noexcept {
  std::lock_guard lock(mu());
  auto& a = table()[static_cast<size_t>(fault)];
  if (a.shots <= 0) return false;
  if (!a.key.empty() && (key == nullptr || *key != a.key)) return false;
  if (--a.shots == 0) armed_count.fetch_sub(1, std::memory_order_relaxed);
  if (seconds) *seconds = a.seconds;
  counters()[static_cast<size_t>(fault)].fetch_add(1, std::memory_order_relaxed);
  return true;
}
}  // namespace detail

const char* fault_name(Fault fault) noexcept { return kNames[static_cast<size_t>(fault)]; }

std::optional<Fault> fault_from_name(const std::string& name) noexcept {
  for (int i = 0; i < kFaultKinds; ++i)
    if (name == kNames[static_cast<size_t>(i)]) return static_cast<Fault>(i);
  return std::nullopt;
}

void arm(Fault fault, int count, const std::string& key, double seconds) {
  check(count >= 1, ErrorCode::kInvalidInput, "a fault must be armed for at least one shot, got " + std::to_string(count));
  check(std::isfinite(seconds) && seconds >= 0, ErrorCode::kInvalidInput,
        std::string("fault ") + fault_name(fault) + ": seconds must be finite and >= 0");
  if (fault == Fault::kClockJump) {
    Clock::jump(to_duration(seconds));
    counters()[static_cast<size_t>(fault)].fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::lock_guard lock(mu());
  auto& a = table()[static_cast<size_t>(fault)];
  if (a.shots <= 0) detail::armed_count.fetch_add(1, std::memory_order_relaxed);
  a.shots = count;
  a.key = key;
  a.seconds = seconds;
}

void disarm_all() noexcept {
  std::lock_guard lock(mu());
  for (auto& a : table()) a = Armed{};
  detail::armed_count.store(0, std::memory_order_relaxed);
}

long fired(Fault fault) noexcept { return counters()[static_cast<size_t>(fault)].load(std::memory_order_relaxed); }

const std::string* current_model() noexcept { return tls_model; }
void set_current_model(const std::string* key) noexcept { tls_model = key; }

}  // namespace mpool::core::faults
