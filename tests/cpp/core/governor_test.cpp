#include <gtest/gtest.h>

#include "test_support.h"

namespace mpool::core {
namespace {

TEST(Governor, AvailableIsMinOfOsFreeAndBudgetMinusCommitted) {
  auto probe = std::make_shared<testing::FixedProbe>(1000, 600);
  GovernorOptions o;
  o.memory_fraction = 0.8;
  o.reserve_mb = 100;  // budget = 1000 * 0.8 - 100 = 700
  auto g = std::make_shared<MemoryGovernor>(probe, o);
  EXPECT_DOUBLE_EQ(g->device("cpu")->budget_mb, 700);
  EXPECT_DOUBLE_EQ(g->device("cpu")->available_mb, 600);  // OS free binds
  auto r = g->try_reserve("cpu", 300);
  ASSERT_TRUE(r.has_value());
  EXPECT_DOUBLE_EQ(g->device("cpu")->available_mb, 400);  // budget - committed binds
  EXPECT_FALSE(g->try_reserve("cpu", 450).has_value());
  r->release();
  EXPECT_DOUBLE_EQ(g->device("cpu")->committed_mb, 0);
}

TEST(Governor, ReservationsReleaseOnEveryPath) {
  auto g = std::make_shared<MemoryGovernor>(std::make_shared<testing::FixedProbe>(), GovernorOptions{.budget_mb = {{"cpu", 100}}});
  {
    auto r = g->try_reserve("cpu", 60);
    ASSERT_TRUE(r);
    auto part = r->split(20);
    EXPECT_DOUBLE_EQ(g->device("cpu")->committed_mb, 60);
    try {
      auto moved = std::move(part);
      throw std::runtime_error("loader failed");
    } catch (const std::runtime_error&) {
    }
    EXPECT_DOUBLE_EQ(g->device("cpu")->committed_mb, 40);
  }
  EXPECT_DOUBLE_EQ(g->device("cpu")->committed_mb, 0);
}

TEST(Governor, PressureLevelsFollowUse) {
  auto g = std::make_shared<MemoryGovernor>(std::make_shared<testing::FixedProbe>(), GovernorOptions{.budget_mb = {{"cpu", 100}}});
  EXPECT_EQ(g->device("cpu")->pressure, Pressure::kLow);
  auto a = g->try_reserve("cpu", 60);
  EXPECT_EQ(g->device("cpu")->pressure, Pressure::kNormal);
  auto b = g->try_reserve("cpu", 25);
  EXPECT_EQ(g->device("cpu")->pressure, Pressure::kHigh);
  auto c = g->try_reserve("cpu", 14);
  EXPECT_EQ(g->device("cpu")->pressure, Pressure::kCritical);
}

TEST(Governor, UnknownDeviceAdmitsNothing) {
  auto g = std::make_shared<MemoryGovernor>(std::make_shared<testing::FixedProbe>(), GovernorOptions{});
  EXPECT_FALSE(g->try_reserve("cuda:0", 1).has_value());
  EXPECT_FALSE(g->device("cuda:0").has_value());
}

TEST(Governor, SystemProbeReadsThisMachinesMemory) {
  auto readings = make_system_probe()->read();
  ASSERT_FALSE(readings.empty());
  EXPECT_EQ(readings[0].device, "cpu");
  EXPECT_GT(readings[0].total_mb, 100);
  EXPECT_GT(readings[0].free_mb, 0);
  EXPECT_LE(readings[0].free_mb, readings[0].total_mb);
}

}  // namespace
}  // namespace mpool::core
