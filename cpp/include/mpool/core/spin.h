#pragma once
// Bounded spinning before a blocking wait. A round trip through the pool is two
// cross-thread hand-offs; sleeping on a futex costs several microseconds each,
// so both sides poll briefly first. The bound keeps idle replicas off the CPU.
#include <chrono>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mpool::core {

/// How long a caller or an idle replica polls before it sleeps.
inline constexpr std::chrono::microseconds kSpinBudget{50};

/// One polite busy-wait step.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

/// Polls `ready` for up to `budget`; true as soon as it holds.
template <class Pred>
bool spin_until(Pred ready, std::chrono::microseconds budget = kSpinBudget) {
  auto until = std::chrono::steady_clock::now() + budget;
  while (true) {
    for (int i = 0; i < 16; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    // Give the core away if anyone else wants it: on a busy machine the thread we
    // wait for may need this very core.
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() >= until) return ready();
  }
}

}  // namespace mpool::core
