#include <gtest/gtest.h>

#include <thread>

#include "test_support.h"

namespace mpool::core {
namespace {
using namespace std::chrono_literals;

std::shared_ptr<RequestContext> ctx(double seconds = 10) {
  return std::make_shared<RequestContext>(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                             std::chrono::duration<double>(seconds)),
                                          std::make_shared<ModelMetrics>());
}

TEST(Channel, FullBufferBlocksProducerUntilConsumerReads) {
  Channel<int> ch(ctx(), 2);
  ASSERT_TRUE(ch.push(1));
  ASSERT_TRUE(ch.push(2));
  std::atomic<bool> third{false};
  std::thread producer([&] { third = ch.push(3); });
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(third.load());  // back-pressure: held, not dropped
  EXPECT_EQ(ch.next().value(), 1);
  producer.join();
  EXPECT_TRUE(third.load());
  ch.finish();
  EXPECT_EQ(ch.next().value(), 2);
  EXPECT_EQ(ch.next().value(), 3);
  EXPECT_FALSE(ch.next().has_value());
}

TEST(Channel, ConsumerCancelUnblocksProducerAndSettlesCancelled) {
  auto c = ctx();
  Channel<int> ch(c, 1);
  ASSERT_TRUE(ch.push(1));
  std::atomic<int> result{-1};
  std::thread producer([&] { result = ch.push(2) ? 1 : 0; });
  std::this_thread::sleep_for(10ms);
  ch.cancel();
  producer.join();
  EXPECT_EQ(result.load(), 0);
  EXPECT_TRUE(c->should_stop());
  EXPECT_EQ(c->outcome(), Outcome::kCancelled);
  EXPECT_FALSE(ch.finish());  // the outcome was already decided
}

TEST(Channel, ConsumerDeadlineRaisesTimeoutOnce) {
  auto c = ctx(0.05);
  Channel<int> ch(c, 1);
  try {
    ch.next();
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
  }
  EXPECT_EQ(c->outcome(), Outcome::kTimedOut);
  EXPECT_EQ(c->metrics()->timeouts.load(), 1u);
  EXPECT_FALSE(ch.push(1));
}

TEST(Channel, ErrorArrivesAfterBufferedChunks) {
  Channel<int> ch(ctx(), 4);
  ch.push(1);
  ch.fail(Error(ErrorCode::kModelError, "boom"));
  EXPECT_EQ(ch.next().value(), 1);
  EXPECT_THROW(ch.next(), Error);
}

TEST(Pending, DeliversExactlyOneOutcomeWhenValueAndTimeoutRace) {
  for (int i = 0; i < 200; ++i) {
    auto c = ctx(0.0005);
    auto p = std::make_shared<Pending<int>>(c);
    std::thread worker([&] { p->set_value(1); });
    int outcomes = 0;
    try {
      outcomes += p->wait() == 1;
    } catch (const Error& e) {
      outcomes += e.code() == ErrorCode::kTimeout;
    }
    worker.join();
    EXPECT_EQ(outcomes, 1);
    EXPECT_EQ(c->metrics()->succeeded.load() + c->metrics()->timeouts.load(), 1u);
  }
}

TEST(Pending, CallbackRunsOnceWhenResultArrives) {
  auto p = std::make_shared<Pending<int>>(ctx());
  std::atomic<int> calls{0};
  p->on_done([&] { calls++; });
  p->set_value(5);
  p->set_value(6);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(p->get(), 5);
}

// wait_for lets a waiter look up between slices (the bindings look for Ctrl-C):
// it returns false while nothing is there, true once the result, the end or
// the deadline is, and settles nothing itself.
TEST(Pending, WaitForReturnsInSlicesUntilTheResultOrTheDeadlineAndSettlesNothing) {
  auto p = std::make_shared<Pending<int>>(ctx());
  EXPECT_FALSE(p->wait_for(0.01));
  EXPECT_FALSE(p->done());
  std::thread producer([&] { p->set_value(7); });
  while (!p->wait_for(0.01)) {
  }
  producer.join();
  EXPECT_EQ(p->wait(), 7);

  auto late = std::make_shared<Pending<int>>(ctx(0.02));
  while (!late->wait_for(0.005)) {
  }
  EXPECT_FALSE(late->done());  // the deadline passed; wait() settles it
  EXPECT_THROW(late->wait(), Error);
  EXPECT_TRUE(late->done());
}

TEST(Channel, WaitForReturnsOnceAChunkTheEndOrTheDeadlineIsThere) {
  Channel<int> ch(ctx(), 2);
  EXPECT_FALSE(ch.wait_for(0.01));
  ASSERT_TRUE(ch.push(1));
  EXPECT_TRUE(ch.wait_for(0.01));
  EXPECT_EQ(ch.next().value(), 1);
  std::thread producer([&] { ch.finish(); });
  while (!ch.wait_for(0.01)) {
  }
  producer.join();
  EXPECT_FALSE(ch.next().has_value());

  Channel<int> late(ctx(0.02), 2);
  while (!late.wait_for(0.005)) {
  }
  EXPECT_THROW(late.next(), Error);  // Timeout, settled by next()
}

}  // namespace
}  // namespace mpool::core
