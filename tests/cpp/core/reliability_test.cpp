// One test (at least) per reliability defect of the pool core, each reproducing
// the scenario that used to hang, leak or crash; and one per fault kind.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "mpool/core/faults.h"
#include "test_support.h"

namespace mpool::core {
namespace {
using namespace testing;
using namespace std::chrono_literals;

int identity(int x, RequestContext&) { return x; }

std::optional<ErrorCode> code_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  }
  return std::nullopt;
}

double committed(Pool& pool) { return pool.governor().device("cpu")->committed_mb; }

// Every test starts and ends with no fault armed.
class Reliability : public ::testing::Test {
 protected:
  void SetUp() override { faults::disarm_all(); }
  void TearDown() override { faults::disarm_all(); }
};

// --- defect 1: a future that timed out is settled ----------------------------------

TEST_F(Reliability, TimedOutPendingIsDoneRunsEveryCallbackOnceAndRaisesTimeoutAgainAtOnce) {
  auto ctx = std::make_shared<RequestContext>(Clock::now() + 20ms, nullptr);
  Pending<int> p(ctx);
  std::atomic<int> first{0}, second{0};
  p.on_done([&] { first++; });
  p.on_done([&] { second++; });  // a second callback never replaces the first
  EXPECT_EQ(code_of([&] { p.wait(); }), ErrorCode::kTimeout);
  EXPECT_TRUE(p.done());
  EXPECT_EQ(first.load(), 1);
  EXPECT_EQ(second.load(), 1);
  EXPECT_TRUE(ctx->cancel_requested());  // the model is told to stop
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(code_of([&] { p.wait(); }), ErrorCode::kTimeout);  // at once, not another wait
  EXPECT_EQ(code_of([&] { p.get(); }), ErrorCode::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_FALSE(p.set_value(1));  // a late value is dropped
  std::atomic<int> late{0};
  p.on_done([&] { late++; });  // added after the end: runs at once
  EXPECT_EQ(late.load(), 1);
  EXPECT_EQ(first.load(), 1);
}

TEST_F(Reliability, CancelledPendingRunsCallbacksAndEveryWaiterSeesCancelled) {
  auto ctx = std::make_shared<RequestContext>(Clock::now() + 10s, nullptr);
  Pending<int> p(ctx);
  std::atomic<int> calls{0};
  for (int i = 0; i < 3; ++i) p.on_done([&] { calls++; });
  EXPECT_TRUE(p.cancel());
  EXPECT_TRUE(p.done());
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(code_of([&] { p.wait(); }), ErrorCode::kCancelled);
}

// --- defect 3: callbacks are never destroyed under the future's mutex --------------

TEST_F(Reliability, SecondCallbackKeepsTheFirstAndNoCallbackIsDestroyedUnderTheLock) {
  // The first callback's destructor asks done() from another thread, as a Python
  // callback's destructor takes the GIL that a done() caller holds. Destroyed
  // under the Pending's mutex (when a second callback replaced it), it deadlocked.
  auto ctx = std::make_shared<RequestContext>(Clock::now() + 10s, nullptr);
  auto p = std::make_shared<Pending<int>>(ctx);
  std::atomic<int> ran1{0}, ran2{0};
  std::atomic<bool> probe_returned{false};
  {
    std::shared_ptr<void> guard(nullptr, [&](void*) {
      std::thread probe([&] {
        p->done();
        probe_returned = true;
      });
      probe.join();
    });
    p->on_done([guard, &ran1] { ran1++; });
  }
  p->on_done([&] { ran2++; });
  EXPECT_FALSE(probe_returned.load());  // the first callback is still held
  p->set_value(3);
  EXPECT_EQ(ran1.load(), 1);
  EXPECT_EQ(ran2.load(), 1);
  EXPECT_TRUE(probe_returned.load());
  EXPECT_EQ(p->wait(), 3);
}

// --- defect 2: unregister/unload racing with requests orphan nothing ---------------

TEST_F(Reliability, UnregisterRacingWithRequestsLeavesNoThreadNoReservationNoInstance) {
  Pool pool(test_options(1000));
  std::atomic<int> alive{0};
  std::atomic<bool> stop{false};
  std::atomic<long> outcomes{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c)
    clients.emplace_back([&] {
      while (!stop) {
        try {
          call(pool, "m", 1, 5.0);
        } catch (const Error&) {
        }
        outcomes++;
      }
    });
  for (int round = 0; round < 5; ++round) {
    pool.register_model("m", fn_spec(100, identity, nullptr, &alive));
    EXPECT_TRUE(eventually([&] { return outcomes.load() > (round + 1) * 10; }, 30));
    pool.unload("m", 30);  // a request may cold-start it again right after
    pool.unregister_model("m", 30);
    // Unregister returned: nothing of "m" may be left.
    EXPECT_EQ(alive.load(), 0) << "round " << round;
    EXPECT_DOUBLE_EQ(committed(pool), 0) << "round " << round;
    EXPECT_TRUE(eventually([&] { return pool.stats().threads == 1; })) << "round " << round;
  }
  stop = true;
  for (auto& t : clients) t.join();
  pool.shutdown();
  EXPECT_EQ(pool.stats().threads, 0u);
}

TEST_F(Reliability, UnloadTimingOutOnABusyJobThenUnregisterStillRetiresEveryReplica) {
  Pool pool(test_options(1000));
  std::atomic<int> alive{0};
  Gate gate;
  pool.register_model("m", fn_spec(100, [&](int x, RequestContext& ctx) {
                        gate.wait(ctx);
                        return x;
                      }, nullptr, &alive));
  auto held = call_async(pool, "m", 7, 60.0);
  ASSERT_TRUE(gate.wait_entered(1));
  EXPECT_FALSE(pool.unload("m", 0.05));  // busy: times out
  pool.unregister_model("m", 0.05);      // still busy: returns, the replica exits later
  EXPECT_FALSE(pool.has_model("m"));
  gate.open();
  EXPECT_EQ(held->wait(), 7);  // the running job finishes normally
  EXPECT_TRUE(eventually([&] { return alive.load() == 0 && pool.stats().threads == 1; }, 30));
  EXPECT_DOUBLE_EQ(committed(pool), 0);
}

// --- defect 4: no join under the pool mutex ----------------------------------------

TEST_F(Reliability, CallbackOnADyingReplicaMayCallThePoolWithoutDeadlock) {
  Pool pool(test_options(1000));
  ModelSpec spec = fn_spec(100, identity);
  spec.loader = [](const std::string&) -> std::shared_ptr<Instance> { throw std::runtime_error("no weights"); };
  pool.register_model("bad", spec);
  pool.register_model("good", fn_spec(100, identity));
  std::atomic<int> retried{-1};
  std::atomic<bool> callback_done{false};
  auto pending = std::make_shared<Pending<int>>(pool.make_context("bad", {}));
  pending->on_done([&] {
    // Runs on the failed replica's thread, after it marked itself dead: the
    // maintenance thread reaps it meanwhile, and must not join it under the lock.
    std::this_thread::sleep_for(100ms);
    pool.stats();
    retried = call(pool, "good", 5);
    callback_done = true;
  });
  std::optional<ErrorCode> code;
  try {
    pool.submit("bad", "compute", std::make_shared<UnaryJob<int>>(pending, [](Instance& i, RequestContext& c) {
                  return static_cast<FnInstance&>(i).fn(0, c);
                }));
    pending->get();
  } catch (const Error& e) {
    code = e.code();
  }
  EXPECT_EQ(code, ErrorCode::kSpawnFailed);
  EXPECT_TRUE(eventually([&] { return callback_done.load(); }, 30));
  EXPECT_EQ(retried.load(), 5);
}

// --- defect 5: nothing spawns once shutdown began -----------------------------------

TEST_F(Reliability, ColdStartWaitingForMemoryDuringShutdownSpawnsNothingAndCloseReturns) {
  auto options = test_options(500);
  options.cold_start_replicas = 1;
  auto pool = std::make_unique<Pool>(options);
  std::atomic<int> alive{0};
  Gate gate;
  pool->register_model("a", fn_spec(400, [&](int x, RequestContext& ctx) {
                         gate.wait(ctx);
                         return x;
                       }, nullptr, &alive));
  pool->register_model("b", fn_spec(400, identity, nullptr, &alive));
  auto held = call_async(*pool, "a", 1, 60.0);
  ASSERT_TRUE(gate.wait_entered(1));
  EXPECT_FALSE(pool->unload("a", 0.01));  // a retires once its job ends: b waits for that memory
  std::optional<ErrorCode> b_code;
  std::thread b([&] { b_code = code_of([&] { call(*pool, "b", 2, 60.0); }); });
  EXPECT_TRUE(eventually([&] { return pool->model_stats("b").metrics.requests == 1; }));
  pool->shutdown(0);  // cancels a's job: its memory comes back while b is waiting
  b.join();
  EXPECT_EQ(b_code, ErrorCode::kShuttingDown);
  EXPECT_EQ(alive.load(), 0);
  EXPECT_DOUBLE_EQ(committed(*pool), 0);
  EXPECT_EQ(pool->stats().threads, 0u);
  EXPECT_EQ(code_of([&] { held->wait(); }), ErrorCode::kShuttingDown);
}

// --- defect 6: thread creation that fails ----------------------------------------

TEST_F(Reliability, ThreadCreationFailureOnColdStartIsSpawnFailedAndLeavesNoPhantomReplica) {
  Pool pool(test_options(1000));
  pool.register_model("m", fn_spec(100, identity));
  faults::arm(faults::Fault::kThreadCreateFails, 1, "m");
  EXPECT_EQ(code_of([&] { call(pool, "m", 1); }), ErrorCode::kSpawnFailed);
  auto s = pool.model_stats("m");
  EXPECT_EQ(s.replicas, 0);
  EXPECT_EQ(s.state, "unloaded");
  EXPECT_EQ(s.metrics.spawn_failures, 1u);
  EXPECT_EQ(s.metrics.errors, 1u);  // the request's one outcome
  EXPECT_NE(s.last_spawn_error.find("thread"), std::string::npos) << s.last_spawn_error;
  EXPECT_DOUBLE_EQ(committed(pool), 0);
  EXPECT_EQ(call(pool, "m", 2), 2);  // the next request loads it normally
}

TEST_F(Reliability, ThreadCreationFailureDuringGrowthNeverFailsTheQueuedRequest) {
  auto options = test_options(10000);
  options.cold_start_replicas = 1;
  options.scale_up_after_s = 0;
  options.scale_up_queue_depth = 1;  // growth once more than one job per replica waits
  Pool pool(options);
  Gate gate;
  auto spec = fn_spec(100, [&](int x, RequestContext& ctx) {
    gate.wait(ctx);
    return x;
  });
  spec.max_replicas = 2;
  pool.register_model("m", spec);
  auto first = call_async(pool, "m", 1, 60.0);
  ASSERT_TRUE(gate.wait_entered(1));
  ASSERT_EQ(pool.model_stats("m").replicas, 1);  // one job never asked for growth
  faults::arm(faults::Fault::kThreadCreateFails, 1000, "m");
  std::shared_ptr<Pending<int>> second, third;
  EXPECT_FALSE(code_of([&] { second = call_async(pool, "m", 2, 60.0); }).has_value());
  EXPECT_FALSE(code_of([&] { third = call_async(pool, "m", 3, 60.0); }).has_value());  // asks for growth: fails
  EXPECT_GE(faults::fired(faults::Fault::kThreadCreateFails), 1);
  EXPECT_EQ(pool.model_stats("m").replicas, 1);  // no phantom replica
  faults::disarm_all();
  gate.open();
  EXPECT_EQ(first->wait(), 1);
  EXPECT_EQ(second->wait(), 2);
  EXPECT_EQ(third->wait(), 3);
}

// --- defect 8: a running job is busy; deadlines bound memory waits ------------------

TEST_F(Reliability, ColdStartWaitsForAJobThatOutlivedItsCallerAndThenEvictsItsModel) {
  auto options = test_options(500);
  options.cold_start_replicas = 1;
  Pool pool(options);
  std::atomic<bool> release{false};
  pool.register_model("a", fn_spec(400, [&](int x, RequestContext&) {
                        while (!release) std::this_thread::sleep_for(1ms);  // ignores cancellation
                        return x;
                      }));
  pool.register_model("b", fn_spec(400, identity));
  EXPECT_EQ(code_of([&] { call(pool, "a", 1, 0.05); }), ErrorCode::kTimeout);
  std::thread releaser([&] {
    ASSERT_TRUE(eventually([&] { return pool.model_stats("b").metrics.requests == 1; }, 30));
    release = true;  // while b's cold start waits
  });
  EXPECT_EQ(call(pool, "b", 2, 60.0), 2);
  releaser.join();
  EXPECT_EQ(pool.model_stats("a").replicas, 0);  // evicted once its job returned
}

TEST_F(Reliability, ModelRunningAJobWhoseCallerTimedOutIsNeverEvicted) {
  auto options = test_options(500);
  options.cold_start_replicas = 1;
  Pool pool(options);
  std::atomic<bool> release{false};
  std::atomic<int> alive{0};
  pool.register_model("a", fn_spec(400, [&](int x, RequestContext&) {
                        while (!release) std::this_thread::sleep_for(1ms);  // ignores cancellation
                        return x;
                      }, nullptr, &alive));
  pool.register_model("b", fn_spec(400, identity));
  EXPECT_EQ(code_of([&] { call(pool, "a", 1, 0.05); }), ErrorCode::kTimeout);
  EXPECT_EQ(pool.model_stats("a").busy_replicas, 1);  // the caller left; the job still runs
  // b waits, within its own deadline, for a's job to return: a is never evicted mid-job.
  EXPECT_EQ(code_of([&] { call(pool, "b", 2, 0.3); }), ErrorCode::kTimeout);
  EXPECT_EQ(alive.load(), 1);
  EXPECT_EQ(pool.model_stats("a").busy_replicas, 1);
  release = true;
  EXPECT_TRUE(eventually([&] { return pool.model_stats("a").busy_replicas == 0; }));
  EXPECT_EQ(call(pool, "b", 3, 30.0), 3);  // now idle, it makes room
}

TEST_F(Reliability, WaitingForMemoryIsBoundedByTheRequestsDeadline) {
  auto options = test_options(500);
  options.cold_start_replicas = 1;
  Pool pool(options);
  Gate gate;
  pool.register_model("a", fn_spec(400, [&](int x, RequestContext& ctx) {
                        gate.wait(ctx);
                        return x;
                      }));
  pool.register_model("b", fn_spec(400, identity));
  auto held = call_async(pool, "a", 1, 120.0);
  ASSERT_TRUE(gate.wait_entered(1));
  EXPECT_FALSE(pool.unload("a", 0.01));  // a will retire after its job: b could wait up to 30 s for it
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(code_of([&] { call(pool, "b", 2, 0.2); }), ErrorCode::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);  // the old wait was 30 s
  EXPECT_EQ(pool.model_stats("b").metrics.timeouts, 1u);
  gate.open();
  EXPECT_EQ(held->wait(), 1);
}

// --- defect 10: close on the pool's own thread ---------------------------------------

TEST_F(Reliability, ShutdownOnAReplicaThreadIsRefusedInsteadOfWaitingForItself) {
  Pool pool(test_options(1000));
  std::optional<ErrorCode> inside;
  pool.register_model("m", fn_spec(100, [&](int x, RequestContext&) {
                        inside = code_of([&] { pool.shutdown(); });
                        return x;
                      }));
  EXPECT_EQ(call(pool, "m", 4), 4);
  EXPECT_EQ(inside, ErrorCode::kInvalidInput);
  EXPECT_FALSE(pool.shutting_down());
  EXPECT_FALSE(pool.on_own_thread());
}

// --- defect 11: shutdown mid-stream is ShuttingDown, never Cancelled ---------------

TEST_F(Reliability, ShutdownMidStreamAlwaysEndsTheStreamAsShuttingDown) {
  for (int round = 0; round < 20; ++round) {
    Pool pool(test_options(1000));
    pool.register_model("m", fn_spec(100, identity));
    auto s = stream(pool, "m", 1 << 30, 1);  // the producer reacts to a cancel at once
    ASSERT_TRUE(s->next().has_value());
    pool.shutdown(0);
    std::optional<ErrorCode> code;
    try {
      while (s->next()) {
      }
    } catch (const Error& e) {
      code = e.code();
    }
    ASSERT_EQ(code, ErrorCode::kShuttingDown) << "round " << round;
  }
}

// --- defect 12: durations --------------------------------------------------------

TEST_F(Reliability, InfiniteAndHugeTimeoutsMeanNoLimitAndNaNIsInvalid) {
  Pool pool(test_options(1000));
  pool.register_model("m", fn_spec(100, [](int x, RequestContext&) {
                        std::this_thread::sleep_for(20ms);
                        return x;
                      }));
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(call(pool, "m", 1, inf), 1);
  EXPECT_EQ(call(pool, "m", 2, 1e300), 2);
  EXPECT_EQ(code_of([&] { call(pool, "m", 3, std::nan("")); }), ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { pool.unload("m", std::nan("")); }), ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { pool.set_keep_alive("m", std::nan("")); }), ErrorCode::kInvalidInput);
  EXPECT_EQ(code_of([&] { pool.shutdown(std::nan("")); }), ErrorCode::kInvalidInput);
  auto options = test_options(1000);
  options.request_timeout_s = std::nan("");
  EXPECT_EQ(code_of([&] { Pool bad(options); }), ErrorCode::kInvalidInput);
}

TEST_F(Reliability, UnloadWithInfiniteTimeoutWaitsForTheBusyJob) {
  Pool pool(test_options(1000));
  Gate gate;
  pool.register_model("m", fn_spec(100, [&](int x, RequestContext& ctx) {
                        gate.wait(ctx);
                        return x;
                      }));
  auto held = call_async(pool, "m", 1, std::numeric_limits<double>::infinity());
  ASSERT_TRUE(gate.wait_entered(1));
  std::thread opener([&] {
    std::this_thread::sleep_for(100ms);
    gate.open();
  });
  EXPECT_TRUE(pool.unload("m", std::numeric_limits<double>::infinity()));
  opener.join();
  EXPECT_EQ(held->wait(), 1);
  EXPECT_EQ(pool.model_stats("m").replicas, 0);
}

TEST_F(Reliability, CloseWithInfiniteTimeoutDrainsQueuedWork) {
  auto options = test_options(1000);
  options.cold_start_replicas = 1;
  Pool pool(options);
  auto spec = fn_spec(100, [](int x, RequestContext&) {
    std::this_thread::sleep_for(5ms);
    return x;
  });
  spec.max_replicas = 1;
  pool.register_model("m", spec);
  std::vector<std::shared_ptr<Pending<int>>> ps;
  for (int i = 0; i < 20; ++i) ps.push_back(call_async(pool, "m", i, std::numeric_limits<double>::infinity()));
  pool.shutdown(std::numeric_limits<double>::infinity());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(ps[i]->wait(), i);  // all drained, none refused
}

double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

TEST_F(Reliability, InfiniteMaintenanceIntervalSleepsInsteadOfSpinning) {
  auto options = test_options(1000);
  options.maintenance_interval_s = std::numeric_limits<double>::infinity();
  Pool pool(options);
  pool.register_model("m", fn_spec(100, identity));
  EXPECT_EQ(call(pool, "m", 1), 1);
  double before = process_cpu_seconds();
  std::this_thread::sleep_for(500ms);
  // A spinning maintenance thread burns about the whole 0.5 s.
  EXPECT_LT(process_cpu_seconds() - before, 0.25);
}

// --- minor: critical pressure evicts one victim per fresh reading -------------------

TEST_F(Reliability, CriticalPressureEvictsOnlyWhatAFreshReadingStillDemands) {
  auto options = test_options(1e6);
  auto probe = std::make_shared<FixedProbe>(1e6, 1e6);
  options.probe = probe;
  options.cold_start_replicas = 1;
  Pool pool(options);
  std::atomic<int> unloaded{0};
  auto spec_for = [&](const std::string&) {
    ModelSpec s = fn_spec(100, identity);
    s.loader = [&](const std::string&) {
      struct Releasing : FnInstance {
        FixedProbe* probe;
        std::atomic<int>* unloaded;
        ~Releasing() override {
          probe->set_free(900e3);  // the machine's memory comes back with the first unload
          (*unloaded)++;
        }
      };
      auto inst = std::make_shared<Releasing>();
      inst->fn = identity;
      inst->probe = probe.get();
      inst->unloaded = &unloaded;
      return inst;
    };
    return s;
  };
  for (auto key : {"a", "b", "c"}) {
    pool.register_model(key, spec_for(key));
    ASSERT_EQ(call(pool, key, 1), 1);
  }
  probe->set_free(10);  // critical until one model goes
  EXPECT_TRUE(eventually([&] { return unloaded.load() >= 1; }));
  std::this_thread::sleep_for(300ms);  // many ticks, each with a fresh reading
  EXPECT_EQ(unloaded.load(), 1);
}

// --- minor: a merged batch's context -----------------------------------------------

TEST_F(Reliability, GroupContextStopsOnlyWhenEveryMemberStops) {
  auto a = std::make_shared<RequestContext>(Clock::now() + 10s, nullptr);
  auto b = std::make_shared<RequestContext>(Clock::now() + 20s, nullptr);
  auto g = RequestContext::group({a, b});
  EXPECT_EQ(g->deadline(), b->deadline());
  a->request_cancel();
  EXPECT_FALSE(g->should_stop());  // b still wants its rows
  b->request_cancel();
  EXPECT_TRUE(g->should_stop());
}

// --- faults ---------------------------------------------------------------------

TEST_F(Reliability, FaultLoaderThrowsFailsOnlyThatModelAndRestoresItsReservation) {
  Pool pool(test_options(1000));
  pool.register_model("m", fn_spec(100, identity));
  pool.register_model("other", fn_spec(100, identity));
  ASSERT_EQ(call(pool, "other", 1), 1);
  faults::arm(faults::Fault::kLoaderThrows, 2, "m");
  EXPECT_EQ(code_of([&] { call(pool, "m", 1); }), ErrorCode::kSpawnFailed);
  EXPECT_EQ(call(pool, "other", 2), 2);
  EXPECT_TRUE(eventually([&] { return pool.model_stats("m").replicas == 0; }));
  EXPECT_DOUBLE_EQ(committed(pool), 200);  // only other's two replicas
  EXPECT_GE(pool.model_stats("m").metrics.spawn_failures, 1u);
  EXPECT_TRUE(eventually([&] {
    try {
      return call(pool, "m", 3) == 3;  // the fault is spent: it loads again
    } catch (const Error&) {
      return false;
    }
  }));
}

TEST_F(Reliability, FaultForwardThrowsIsModelErrorForThatRequestOnly) {
  auto options = test_options(1000);
  options.cold_start_replicas = 1;
  Pool pool(options);
  auto spec = fn_spec(100, identity);
  spec.max_replicas = 1;
  pool.register_model("m", spec);
  ASSERT_EQ(call(pool, "m", 1), 1);
  faults::arm(faults::Fault::kForwardThrows, 1, "m");
  EXPECT_EQ(code_of([&] { call(pool, "m", 2); }), ErrorCode::kModelError);
  EXPECT_EQ(call(pool, "m", 3), 3);  // the same replica serves on
  auto s = pool.model_stats("m");
  EXPECT_EQ(s.metrics.errors, 1u);
  EXPECT_EQ(s.metrics.replicas_spawned, 1u);
  EXPECT_DOUBLE_EQ(committed(pool), 100);
}

TEST_F(Reliability, FaultReplicaDiesFailsItsJobTypedAndAReplacementServes) {
  auto options = test_options(1000);
  options.cold_start_replicas = 1;
  Pool pool(options);
  std::atomic<int> alive{0};
  auto spec = fn_spec(100, identity, nullptr, &alive);
  spec.max_replicas = 1;
  pool.register_model("m", spec);
  pool.register_model("other", fn_spec(100, identity));
  ASSERT_EQ(call(pool, "m", 1), 1);
  faults::arm(faults::Fault::kReplicaDies, 1, "m");
  auto code = code_of([&] { call(pool, "m", 2); });
  EXPECT_EQ(code, ErrorCode::kModelError);
  EXPECT_EQ(call(pool, "other", 5), 5);
  EXPECT_EQ(call(pool, "m", 3), 3);  // served by the replacement
  auto s = pool.model_stats("m");
  EXPECT_EQ(s.metrics.replica_deaths, 1u);
  EXPECT_EQ(s.metrics.replicas_spawned, 2u);
  EXPECT_EQ(s.replicas, 1);
  EXPECT_EQ(alive.load(), 1);  // the dead replica's instance was destroyed
  EXPECT_TRUE(eventually([&] { return committed(pool) == 100.0 + 100.0; }));  // one replica each
}

TEST_F(Reliability, FaultSlowLoadOfOneModelNeverBlocksAResidentModel) {
  Pool pool(test_options(1000));
  Gate loading;
  std::atomic<bool> load_may_finish{false};
  ModelSpec slow = fn_spec(100, identity);
  slow.loader = [&](const std::string&) -> std::shared_ptr<Instance> {
    while (!load_may_finish) std::this_thread::sleep_for(1ms);
    auto inst = std::make_shared<FnInstance>();
    inst->fn = identity;
    return inst;
  };
  pool.register_model("slow", slow);
  pool.register_model("resident", fn_spec(100, identity));
  ASSERT_EQ(call(pool, "resident", 0), 0);
  auto waiting = call_async(pool, "slow", 9, 120.0);  // its load is stuck
  for (int i = 1; i <= 200; ++i) ASSERT_EQ(call(pool, "resident", i, 30.0), i);
  EXPECT_FALSE(waiting->done());
  EXPECT_EQ(pool.model_stats("slow").state, "loading");
  load_may_finish = true;
  EXPECT_EQ(waiting->wait(), 9);
  // The slow_load fault does the same from inside the pool.
  pool.unload("slow");
  faults::arm(faults::Fault::kSlowLoad, 2, "slow", 1.0);
  auto again = call_async(pool, "slow", 10, 120.0);
  for (int i = 1; i <= 50; ++i) ASSERT_EQ(call(pool, "resident", i, 30.0), i);
  EXPECT_EQ(again->wait(), 10);
  EXPECT_GE(faults::fired(faults::Fault::kSlowLoad), 1);
}

TEST_F(Reliability, FaultConsumerStallsTimesTheStreamOutAndFreesTheReplica) {
  auto options = test_options(1000);
  options.cold_start_replicas = 1;
  Pool pool(options);
  auto spec = fn_spec(100, identity);
  spec.max_replicas = 1;
  pool.register_model("m", spec);
  auto channel = std::make_shared<Channel<int>>(pool.make_context("m", {0.3}), 2);
  pool.submit("m", "compute", std::make_shared<StreamJob<int>>(channel, [](Instance&, RequestContext& ctx, Channel<int>& out) {
                for (int i = 0; !ctx.should_stop(); ++i)
                  if (!out.push(i)) return;
              }));
  faults::arm(faults::Fault::kConsumerStalls, 1, "", 1.0);  // longer than the deadline
  std::optional<ErrorCode> code;
  try {
    while (channel->next()) {
    }
  } catch (const Error& e) {
    code = e.code();
  }
  EXPECT_EQ(code, ErrorCode::kTimeout);
  EXPECT_TRUE(eventually([&] { return pool.model_stats("m").busy_replicas == 0; }));
  EXPECT_EQ(call(pool, "m", 4), 4);
  EXPECT_EQ(pool.model_stats("m").metrics.timeouts, 1u);
}

TEST_F(Reliability, FaultClockJumpExpiresWaitingRequestsAndTriggersKeepAlive) {
  auto options = test_options(1000, /*keep_alive_s=*/300);
  options.cold_start_replicas = 1;
  Pool pool(options);
  Gate gate;
  std::atomic<int> alive{0};
  auto spec = fn_spec(100, [&](int x, RequestContext& ctx) {
    gate.wait(ctx);
    return x;
  }, nullptr, &alive);
  spec.max_replicas = 1;
  pool.register_model("m", spec);
  auto running = call_async(pool, "m", 1, 60.0);
  ASSERT_TRUE(gate.wait_entered(1));
  auto queued = call_async(pool, "m", 2, 60.0);
  faults::arm(faults::Fault::kClockJump, 1, "", 3600);  // an hour passes at once
  EXPECT_EQ(code_of([&] { running->wait(); }), ErrorCode::kTimeout);
  EXPECT_EQ(code_of([&] { queued->wait(); }), ErrorCode::kTimeout);
  gate.open();
  EXPECT_TRUE(eventually([&] { return pool.model_stats("m").busy_replicas == 0; }, 30));
  EXPECT_EQ(alive.load(), 1);  // just used: its keep-alive runs from now
  faults::arm(faults::Fault::kClockJump, 1, "", 3600);  // idle for another hour: past 300 s
  EXPECT_TRUE(eventually([&] { return alive.load() == 0; }, 30));
  EXPECT_EQ(call(pool, "m", 3, 30.0), 3);  // and serves again with fresh deadlines
  EXPECT_EQ(pool.model_stats("m").metrics.timeouts, 2u);
}

}  // namespace
}  // namespace mpool::core
