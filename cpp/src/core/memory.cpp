#include "mpool/core/memory.h"

#include <cmath>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "mpool/base/error.h"

namespace mpool::core {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Reads one "Key:   123 kB" line of /proc/meminfo, in MB; -1 if absent.
double meminfo_mb(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() && line[key.size()] == ':') {
      std::istringstream fields(line.substr(key.size() + 1));
      double kb = 0;
      fields >> kb;
      return kb / 1024.0;
    }
  }
  return -1;
}

// A cgroup v2 memory file in MB; -1 if absent or "max".
double cgroup_mb(const char* path) {
  std::ifstream in(path);
  std::string value;
  if (!(in >> value) || value == "max") return -1;
  char* end = nullptr;
  double bytes = std::strtod(value.c_str(), &end);
  return end == value.c_str() ? -1 : bytes / kMiB;
}

// NVML, resolved at run time so that CPU-only builds and machines need nothing.
struct Nvml {
  struct Memory {
    unsigned long long total, free, used;
  };
  using InitFn = int (*)();
  using CountFn = int (*)(unsigned*);
  using HandleFn = int (*)(unsigned, void**);
  using MemoryFn = int (*)(void*, Memory*);

  void* lib = nullptr;
  CountFn count = nullptr;
  HandleFn handle = nullptr;
  MemoryFn memory = nullptr;

  Nvml() {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return;
    auto init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
    count = reinterpret_cast<CountFn>(dlsym(lib, "nvmlDeviceGetCount_v2"));
    handle = reinterpret_cast<HandleFn>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    memory = reinterpret_cast<MemoryFn>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    if (init == nullptr || count == nullptr || handle == nullptr || memory == nullptr || init() != 0) {
      count = nullptr;
    }
  }
  bool ok() const { return count != nullptr; }
};

// CUDA ordinals visible to this process, as NVML indices (CUDA_VISIBLE_DEVICES).
std::vector<unsigned> visible_nvml_indices(unsigned present) {
  std::vector<unsigned> out;
  const char* env = std::getenv("CUDA_VISIBLE_DEVICES");
  if (env == nullptr) {
    for (unsigned i = 0; i < present; ++i) out.push_back(i);
    return out;
  }
  std::stringstream list(env);
  std::string item;
  while (std::getline(list, item, ',')) {
    char* end = nullptr;
    long idx = std::strtol(item.c_str(), &end, 10);
    if (end == item.c_str() || idx < 0 || static_cast<unsigned>(idx) >= present) break;  // CUDA stops at the first invalid entry
    out.push_back(static_cast<unsigned>(idx));
  }
  return out;
}

class SystemProbe final : public MemoryProbe {
 public:
  std::vector<DeviceReading> read() override {
    std::vector<DeviceReading> out;
    DeviceReading cpu{"cpu", meminfo_mb("MemTotal"), meminfo_mb("MemAvailable")};
    double limit = cgroup_mb("/sys/fs/cgroup/memory.max");
    double current = cgroup_mb("/sys/fs/cgroup/memory.current");
    if (limit > 0 && limit < cpu.total_mb) {
      cpu.total_mb = limit;
      if (current >= 0) cpu.free_mb = std::min(cpu.free_mb, limit - current);
    }
    out.push_back(cpu);
    if (nvml_.ok()) {
      unsigned present = 0;
      if (nvml_.count(&present) == 0) {
        auto visible = visible_nvml_indices(present);
        for (size_t ordinal = 0; ordinal < visible.size(); ++ordinal) {
          void* dev = nullptr;
          Nvml::Memory mem{};
          if (nvml_.handle(visible[ordinal], &dev) != 0 || nvml_.memory(dev, &mem) != 0) continue;
          out.push_back({"cuda:" + std::to_string(ordinal), mem.total / kMiB, mem.free / kMiB});
        }
      }
    }
    return out;
  }

 private:
  Nvml nvml_;
};

}  // namespace

std::shared_ptr<MemoryProbe> make_system_probe() { return std::make_shared<SystemProbe>(); }

const char* pressure_name(Pressure p) noexcept {
  switch (p) {
    case Pressure::kLow: return "low";
    case Pressure::kNormal: return "normal";
    case Pressure::kHigh: return "high";
    case Pressure::kCritical: return "critical";
  }
  return "low";
}

// --- Reservation -------------------------------------------------------------

Reservation::Reservation(Reservation&& other) noexcept
    : governor_(std::move(other.governor_)), device_(std::move(other.device_)), mb_(other.mb_) {
  other.mb_ = 0;
}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    release();
    governor_ = std::move(other.governor_);
    device_ = std::move(other.device_);
    mb_ = other.mb_;
    other.mb_ = 0;
  }
  return *this;
}

void Reservation::release() noexcept {
  if (governor_ && mb_ > 0) governor_->give_back(device_, mb_);
  governor_.reset();
  mb_ = 0;
}

Reservation Reservation::split(double mb) {
  check(governor_ != nullptr && mb >= 0 && mb <= mb_ + 1e-9, ErrorCode::kInternal,
        "cannot split " + std::to_string(mb) + " MB off a reservation of " + std::to_string(mb_) + " MB");
  mb = std::min(mb, mb_);
  mb_ -= mb;
  return Reservation(governor_, device_, mb);
}

// --- MemoryGovernor ----------------------------------------------------------

MemoryGovernor::MemoryGovernor(std::shared_ptr<MemoryProbe> probe, GovernorOptions options)
    : probe_(probe ? std::move(probe) : make_system_probe()), options_(std::move(options)) {
  check(options_.memory_fraction > 0 && options_.memory_fraction <= 1, ErrorCode::kInvalidInput,
        "memory_fraction must be in (0, 1], got " + std::to_string(options_.memory_fraction));
  check(options_.reserve_mb >= 0, ErrorCode::kInvalidInput,
        "reserve_mb must be >= 0, got " + std::to_string(options_.reserve_mb));
  std::lock_guard lock(mu_);
  refresh_locked();
}

void MemoryGovernor::refresh_locked() {
  readings_.clear();
  for (auto& r : probe_->read()) readings_[r.device] = r;
}

void MemoryGovernor::refresh() {
  std::lock_guard lock(mu_);
  refresh_locked();
}

DeviceMemory MemoryGovernor::account(const DeviceReading& reading) const {
  DeviceMemory d;
  d.device = reading.device;
  d.total_mb = reading.total_mb;
  d.os_free_mb = reading.free_mb;
  auto override_it = options_.budget_mb.find(reading.device);
  if (override_it != options_.budget_mb.end()) {
    d.budget_mb = override_it->second;
  } else {
    d.budget_mb = reading.total_mb * options_.memory_fraction;
    if (reading.device == "cpu") d.budget_mb -= options_.reserve_mb;
  }
  d.budget_mb = std::max(0.0, d.budget_mb);
  auto c = committed_.find(reading.device);
  d.committed_mb = c == committed_.end() ? 0 : c->second;
  d.available_mb = std::max(0.0, std::min(d.os_free_mb, d.budget_mb - d.committed_mb));
  double used = d.budget_mb <= 0 ? 1.0 : 1.0 - d.available_mb / d.budget_mb;
  d.pressure = used < 0.5    ? Pressure::kLow
               : used < 0.8  ? Pressure::kNormal
               : used < 0.95 ? Pressure::kHigh
                             : Pressure::kCritical;
  return d;
}

std::optional<Reservation> MemoryGovernor::try_reserve(const std::string& device, double mb) {
  check(mb >= 0, ErrorCode::kInvalidInput, "cannot reserve a negative amount (" + std::to_string(mb) + " MB)");
  std::lock_guard lock(mu_);
  refresh_locked();  // admission decisions use a fresh reading
  auto it = readings_.find(device);
  if (it == readings_.end()) return std::nullopt;
  if (account(it->second).available_mb + 1e-9 < mb) return std::nullopt;
  committed_[device] += mb;
  return Reservation(shared_from_this(), device, mb);
}

void MemoryGovernor::give_back(const std::string& device, double mb) noexcept {
  std::lock_guard lock(mu_);
  auto it = committed_.find(device);
  if (it == committed_.end()) return;
  it->second = std::max(0.0, it->second - mb);
}

std::optional<DeviceMemory> MemoryGovernor::device(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = readings_.find(name);
  if (it == readings_.end()) return std::nullopt;
  return account(it->second);
}

std::vector<DeviceMemory> MemoryGovernor::snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<DeviceMemory> out;
  for (auto& [name, reading] : readings_) out.push_back(account(reading));
  return out;
}

void MemoryGovernor::set_budget(const std::string& device, std::optional<double> mb) {
  if (mb)
    check(std::isfinite(*mb) && *mb >= 0, ErrorCode::kInvalidInput,
          "the memory budget of '" + device + "' must be a finite number of MB >= 0, got " + std::to_string(*mb));
  std::lock_guard lock(mu_);
  if (mb)
    options_.budget_mb[device] = *mb;
  else
    options_.budget_mb.erase(device);
}

bool MemoryGovernor::has_device(const std::string& name) const {
  std::lock_guard lock(mu_);
  return readings_.count(name) > 0;
}

}  // namespace mpool::core
