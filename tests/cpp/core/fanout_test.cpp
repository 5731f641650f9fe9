// Fanout: the scheduler of a call split into separately queued parts.
#include "mpool/core/fanout.h"

#include <gtest/gtest.h>

#include "mpool/core/progress.h"
#include "test_support.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace mpool::core {
namespace {

// Parts "queued" by start(): the test finishes them by hand or from worker threads.
struct Harness {
  std::mutex mu;
  std::vector<size_t> started;   // in start order
  std::vector<size_t> cancelled;
  size_t out = 0, max_out = 0;
  size_t window = 2;
  std::atomic<int> completed{0}, failed{0};
  std::optional<std::string> error;
  std::optional<size_t> refuse;  // start() of this part throws Overloaded
  std::shared_ptr<Fanout> fanout;

  Fanout::Hooks hooks() {
    Fanout::Hooks h;
    h.window = [this] {
      std::lock_guard lock(mu);
      return window;
    };
    h.start = [this](size_t part) -> std::function<void()> {
      std::lock_guard lock(mu);
      if (refuse == part) throw Error(ErrorCode::kOverloaded, "part " + std::to_string(part) + " refused");
      started.push_back(part);
      max_out = std::max(max_out, ++out);
      return [this, part] {
        std::lock_guard lock(mu);
        cancelled.push_back(part);
      };
    };
    h.complete = [this] { completed++; };
    h.fail = [this](const Error& e) {
      failed++;
      std::lock_guard lock(mu);
      error = e.what();
    };
    return h;
  }
  void finish(size_t part, bool ok = true) {
    {
      std::lock_guard lock(mu);
      --out;
    }
    if (ok)
      fanout->part_succeeded(part);
    else
      fanout->part_failed(part, Error(ErrorCode::kModelError, "texts[" + std::to_string(part) + "]: bad"));
  }
};

TEST(Fanout, KeepsAtMostTheWindowOutAndStartsTheNextPartWhenOneSucceeds) {
  Harness h;
  h.fanout = Fanout::create(5, h.hooks());
  h.fanout->begin();
  EXPECT_EQ(h.started, (std::vector<size_t>{0, 1}));
  h.finish(1);
  EXPECT_EQ(h.started, (std::vector<size_t>{0, 1, 2}));
  h.finish(0);
  h.finish(2);
  h.finish(3);
  EXPECT_EQ(h.completed.load(), 0);
  h.finish(4);
  EXPECT_EQ(h.started, (std::vector<size_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(h.max_out, 2u);
  EXPECT_EQ(h.completed.load(), 1);
  EXPECT_EQ(h.failed.load(), 0);
  EXPECT_TRUE(h.fanout->ended());
  EXPECT_TRUE(h.cancelled.empty());
}

TEST(Fanout, ReadsTheWindowAgainBeforeEachStart) {
  Harness h;
  h.window = 1;
  h.fanout = Fanout::create(6, h.hooks());
  h.fanout->begin();
  EXPECT_EQ(h.started.size(), 1u);
  h.window = 3;  // the model grew replicas
  h.finish(0);
  EXPECT_EQ(h.started, (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(h.fanout->out(), 3u);
}

TEST(Fanout, AFailingPartFailsTheCallOnceCancelsThePartsOutAndStartsNoMore) {
  Harness h;
  h.window = 3;
  h.fanout = Fanout::create(5, h.hooks());
  h.fanout->begin();
  h.finish(0);  // starts 3
  h.finish(2, /*ok=*/false);
  EXPECT_EQ(h.failed.load(), 1);
  EXPECT_EQ(h.error, "texts[2]: bad");
  std::sort(h.cancelled.begin(), h.cancelled.end());
  EXPECT_EQ(h.cancelled, (std::vector<size_t>{1, 3}));
  h.finish(1);  // a part that finishes after the end changes nothing
  h.finish(3, /*ok=*/false);
  EXPECT_EQ(h.started, (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_EQ(h.failed.load(), 1);
  EXPECT_EQ(h.completed.load(), 0);
}

TEST(Fanout, CloseCancelsThePartsOutAndNothingCompletesAfterIt) {
  Harness h;
  h.fanout = Fanout::create(4, h.hooks());
  h.fanout->begin();
  h.fanout->close();
  std::sort(h.cancelled.begin(), h.cancelled.end());
  EXPECT_EQ(h.cancelled, (std::vector<size_t>{0, 1}));
  h.finish(0);
  h.finish(1);
  h.fanout->close();  // idempotent
  EXPECT_EQ(h.started.size(), 2u);
  EXPECT_EQ(h.completed.load(), 0);
  EXPECT_EQ(h.failed.load(), 0);
  EXPECT_EQ(h.cancelled.size(), 2u);
}

TEST(Fanout, ARefusedStartFailsTheCallWithTheRefusal) {
  Harness h;
  h.refuse = 2;
  h.fanout = Fanout::create(4, h.hooks());
  h.fanout->begin();
  h.finish(0);  // part 2 is refused
  EXPECT_EQ(h.failed.load(), 1);
  EXPECT_EQ(h.error, "part 2 refused");
  EXPECT_EQ(h.cancelled, (std::vector<size_t>{1}));
  EXPECT_EQ(h.fanout->out(), 1u);  // part 1 was told to cancel; it is out until it reports
  h.finish(1, /*ok=*/false);
  EXPECT_EQ(h.fanout->out(), 0u);
  EXPECT_EQ(h.failed.load(), 1);
}

TEST(Fanout, APartThatSettlesInsideItsOwnStartIsNotCancelledLater) {
  Harness h;
  Fanout::Hooks hooks = h.hooks();
  auto inner = hooks.start;
  hooks.start = [&, inner](size_t part) {
    auto cancel = inner(part);
    if (part == 0) {
      std::lock_guard lock(h.mu);
      --h.out;
    }
    if (part == 0) h.fanout->part_succeeded(0);  // a replica took and finished it at once
    return cancel;
  };
  h.fanout = Fanout::create(3, hooks);
  h.fanout->begin();
  h.fanout->close();
  EXPECT_EQ(h.cancelled, (std::vector<size_t>{1, 2}));
}

// Parts finish on worker threads, as replicas finish sub-batches: the window
// holds, every part runs once, and the call completes exactly once.
TEST(Fanout, PartsFinishedFromManyThreadsCompleteTheCallExactlyOnce) {
  for (int round = 0; round < 20; ++round) {
    Harness h;
    h.window = 4;
    std::mutex qmu;
    std::condition_variable qcv;
    std::deque<size_t> queue;
    bool stop = false;
    Fanout::Hooks hooks = h.hooks();
    auto inner = hooks.start;
    hooks.start = [&, inner](size_t part) {
      auto cancel = inner(part);
      {
        std::lock_guard lock(qmu);
        queue.push_back(part);
      }
      qcv.notify_one();
      return cancel;
    };
    h.fanout = Fanout::create(64, hooks);
    std::vector<std::thread> workers;
    for (int w = 0; w < 4; ++w)
      workers.emplace_back([&] {
        while (true) {
          size_t part;
          {
            std::unique_lock lock(qmu);
            qcv.wait(lock, [&] { return stop || !queue.empty(); });
            if (queue.empty()) return;
            part = queue.front();
            queue.pop_front();
          }
          h.finish(part);
        }
      });
    h.fanout->begin();
    for (int i = 0; i < 2000 && h.completed.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    {
      std::lock_guard lock(qmu);
      stop = true;
    }
    qcv.notify_all();
    for (auto& t : workers) t.join();
    EXPECT_EQ(h.completed.load(), 1);
    EXPECT_EQ(h.failed.load(), 0);
    EXPECT_EQ(h.started.size(), 64u);
    EXPECT_LE(h.max_out, 4u);
  }
}

TEST(Progress, WaitPastReturnsOnAdvanceOnFinishAndAtItsTimeout) {
  Progress p(10);
  EXPECT_EQ(p.total(), 10u);
  EXPECT_EQ(p.wait_past(0, 0.01), 0u);  // nothing done: back at the timeout
  std::thread advance([&] { p.advance(4); });
  EXPECT_EQ(p.wait_past(0, 30), 4u);
  advance.join();
  std::thread finish([&] { p.finish(); });
  EXPECT_EQ(p.wait_past(4, 30), 4u);
  finish.join();
  EXPECT_TRUE(p.finished());
  EXPECT_EQ(p.wait_past(4, 30), 4u);  // at once from now on
}

TEST(PoolSplitHint, ReportsTheBatchBudgetAndTheServingReplicas) {
  Pool pool(testing::test_options(1000));
  ModelSpec spec = testing::fn_spec(10, [](int x, RequestContext&) { return x; });
  spec.batch_budget = 512;
  spec.max_replicas = 2;
  pool.register_model("m", spec);
  EXPECT_EQ(pool.split_hint("m").batch_budget, 512u);
  EXPECT_EQ(pool.split_hint("m").replicas, 0);  // unloaded
  EXPECT_EQ(testing::call(pool, "m", 3), 3);
  EXPECT_EQ(pool.split_hint("m").replicas, 2);  // the cold start's two
  pool.unload("m");
  EXPECT_EQ(pool.split_hint("m").replicas, 0);
  EXPECT_THROW(pool.split_hint("nope"), Error);
}

}  // namespace
}  // namespace mpool::core
