#pragma once
// Memory governance per device: budgets, RAII reservations, live readings and
// pressure levels. The governor only counts megabytes; what occupies them is the
// pool's business.
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace mpool::core {

/// One device's memory as the OS or driver reports it.
struct DeviceReading {
  std::string device;  ///< "cpu" or "cuda:N"
  double total_mb = 0;
  double free_mb = 0;
};

/// Source of live memory readings; swapped for a fixed one in tests.
class MemoryProbe {
 public:
  virtual ~MemoryProbe() = default;
  /// Current readings of every device present.
  virtual std::vector<DeviceReading> read() = 0;
};

/// Reads /proc/meminfo for "cpu" and, when an NVIDIA driver is present, NVML for
/// each "cuda:N" (loaded at run time, so builds need no CUDA).
std::shared_ptr<MemoryProbe> make_system_probe();

/// How full a device is, from available / budget.
enum class Pressure { kLow, kNormal, kHigh, kCritical };
/// "low", "normal", "high" or "critical".
const char* pressure_name(Pressure p) noexcept;

/// Budget rules.
struct GovernorOptions {
  double memory_fraction = 0.8;  ///< of each device's total
  double reserve_mb = 512;       ///< kept back from system RAM on top of the fraction
  std::map<std::string, double> budget_mb;  ///< explicit per-device budgets, overriding the rule
};

/// A snapshot of one device's accounting.
struct DeviceMemory {
  std::string device;
  double total_mb = 0;
  double budget_mb = 0;
  double committed_mb = 0;
  double os_free_mb = 0;
  double available_mb = 0;  ///< min(os_free, budget - committed)
  Pressure pressure = Pressure::kLow;
};

class MemoryGovernor;

/// Megabytes held on one device until destroyed or released.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept;
  Reservation& operator=(Reservation&& other) noexcept;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { release(); }

  /// Returns the megabytes to the governor (idempotent).
  void release() noexcept;
  /// Splits `mb` off into a reservation of its own.
  Reservation split(double mb);
  /// Megabytes held.
  double mb() const noexcept { return mb_; }
  /// Device held on.
  const std::string& device() const noexcept { return device_; }
  /// True while it holds memory.
  explicit operator bool() const noexcept { return governor_ != nullptr && mb_ > 0; }

 private:
  friend class MemoryGovernor;
  Reservation(std::shared_ptr<MemoryGovernor> governor, std::string device, double mb)
      : governor_(std::move(governor)), device_(std::move(device)), mb_(mb) {}
  std::shared_ptr<MemoryGovernor> governor_;
  std::string device_;
  double mb_ = 0;
};

/// Budgets and committed memory for every device.
class MemoryGovernor : public std::enable_shared_from_this<MemoryGovernor> {
 public:
  MemoryGovernor(std::shared_ptr<MemoryProbe> probe, GovernorOptions options);

  /// Reserves `mb` on `device` if available (fresh reading); nullopt otherwise.
  std::optional<Reservation> try_reserve(const std::string& device, double mb);
  /// Re-reads the probe.
  void refresh();
  /// Accounting of one device; nullopt if the device is not present.
  std::optional<DeviceMemory> device(const std::string& name) const;
  /// Accounting of every device present.
  std::vector<DeviceMemory> snapshot() const;
  /// True if `name` is a present device.
  bool has_device(const std::string& name) const;
  /// Sets (or, with nullopt, removes) an explicit budget for `device` in MB.
  /// Reservations already held stay; a budget below them only refuses new ones.
  void set_budget(const std::string& device, std::optional<double> mb);

 private:
  friend class Reservation;
  void give_back(const std::string& device, double mb) noexcept;
  DeviceMemory account(const DeviceReading& reading) const;  // needs mu_
  void refresh_locked();

  std::shared_ptr<MemoryProbe> probe_;
  GovernorOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, DeviceReading> readings_;
  std::map<std::string, double> committed_;
};

}  // namespace mpool::core
