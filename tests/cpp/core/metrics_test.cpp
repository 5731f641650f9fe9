// RateWindow (inputs and tokens per second over the last minute) and the
// inputs counter of ModelMetrics.
#include "mpool/core/metrics.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace mpool::core {
namespace {

Clock::time_point at_second(double s) {
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)));
}

TEST(RateWindow, IsZeroBeforeAnySample) {
  RateWindow w;
  EXPECT_EQ(w.rate(at_second(1000)), 0.0);
}

TEST(RateWindow, DividesByTheTimeSinceTheFirstSampleWhileThatIsUnderAMinute) {
  RateWindow w;
  w.add(100, at_second(1000.2));
  EXPECT_DOUBLE_EQ(w.rate(at_second(1000.5)), 100.0);  // at least one second
  w.add(300, at_second(1009.9));
  EXPECT_DOUBLE_EQ(w.rate(at_second(1009.9)), 40.0);  // 400 over seconds 1000..1009
}

TEST(RateWindow, CountsOnlyTheLastMinute) {
  RateWindow w;
  for (int s = 0; s < 120; ++s) w.add(10, at_second(1000 + s));
  EXPECT_DOUBLE_EQ(w.rate(at_second(1119.5)), 10.0);  // 60 buckets of 10 over 60 s
  // Twenty quiet seconds later, only 40 of those seconds are still in the window.
  EXPECT_NEAR(w.rate(at_second(1139.5)), 40.0 * 10 / 60, 1e-9);
  EXPECT_EQ(w.rate(at_second(1300)), 0.0);
  w.add(60, at_second(1300.1));  // a bucket reused after a long gap starts afresh
  EXPECT_DOUBLE_EQ(w.rate(at_second(1300.2)), 1.0);
}

TEST(ModelMetrics, RecordInputsCountsInputsAndRatesFromManyThreads) {
  ModelMetrics m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) m.record_inputs(2, 10);
    });
  for (auto& t : threads) t.join();
  MetricsSnapshot s = m.snapshot();
  EXPECT_EQ(s.inputs, 16000u);
  EXPECT_GT(s.inputs_per_s, 0.0);
  EXPECT_NEAR(s.tokens_per_s, s.inputs_per_s * 5, 1e-9 * s.tokens_per_s);
}

}  // namespace
}  // namespace mpool::core
