// Pins WorkerPool (src/engine/worker_pool.hpp) on its own, with a runner that
// records what it is given: inline with no threads, first in first out with
// one, in parallel with several, waitIdle and stop. Latches, never sleeps.
#include "engine/worker_pool.hpp"

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "support/catch.hpp"
#include "support/test_support.hpp"

using asyncflow::InstanceId;
using asyncflow::detail::Continuation;
using asyncflow::detail::Drive;
using asyncflow::detail::WorkerPool;
using asyncflow::testing::Latch;

namespace {

// What a runner saw: the ids, in order, and the threads they ran on.
struct Seen {
  std::mutex mutex;
  std::vector<InstanceId> ids;
  std::vector<std::thread::id> threads;
  void add(const Continuation& c) {
    std::lock_guard lock(mutex);
    ids.push_back(c.id);
    threads.push_back(std::this_thread::get_id());
  }
  std::vector<InstanceId> taken() {
    std::lock_guard lock(mutex);
    return ids;
  }
};

}  // namespace

TEST_CASE("with no threads a continuation runs inline, before submit returns") {
  Seen seen;
  WorkerPool pool(0, [&](const Continuation& c) { seen.add(c); });
  CHECK(pool.isInline());
  pool.submit({7, Drive::Recover});
  CHECK(seen.taken() == std::vector<InstanceId>{7});
  CHECK(seen.threads.at(0) == std::this_thread::get_id());
  CHECK(pool.queued() == 0);
  pool.waitIdle();  // returns at once
  pool.stop();
  pool.submit({8, Drive::Continue});  // after stop(): dropped
  CHECK(seen.taken() == std::vector<InstanceId>{7});
}

TEST_CASE("one worker runs continuations first in first out, off the caller's thread") {
  Seen seen;
  Latch hold;
  WorkerPool pool(1, [&](const Continuation& c) {
    if (c.id == 1) hold.wait();
    seen.add(c);
  });
  CHECK_FALSE(pool.isInline());
  for (InstanceId id = 1; id <= 5; ++id) pool.submit({id, Drive::Continue});
  CHECK(pool.queued() >= 4);  // 1 may have been taken already, and is held
  hold.countDown();
  pool.waitIdle();
  CHECK(pool.queued() == 0);
  CHECK(seen.taken() == std::vector<InstanceId>{1, 2, 3, 4, 5});
  for (std::thread::id thread : seen.threads) CHECK(thread != std::this_thread::get_id());
}

TEST_CASE("several workers run continuations at the same time") {
  // Two continuations meet at a two-party latch: the test can only finish if
  // they run in parallel.
  Latch both(2);
  std::atomic<int> ran{0};
  WorkerPool pool(2, [&](const Continuation&) {
    both.countDown();
    both.wait();
    ++ran;
  });
  pool.submit({1, Drive::Continue});
  pool.submit({2, Drive::Continue});
  pool.waitIdle();
  CHECK(ran == 2);
}

TEST_CASE("stop runs what is queued, continuations they submit included, then joins") {
  std::atomic<int> ran{0};
  WorkerPool* self = nullptr;
  Latch hold;
  WorkerPool pool(1, [&](const Continuation& c) {
    if (c.id == 1) hold.wait();
    ++ran;
    if (c.id < 3) self->submit({c.id + 10, Drive::Continue});  // a continuation's continuation
  });
  self = &pool;
  pool.submit({1, Drive::Continue});
  pool.submit({2, Drive::Continue});
  std::thread stopper([&] { pool.stop(); });
  hold.countDown();
  stopper.join();
  CHECK(ran == 4);  // 1, 2, 11, 12
  pool.stop();      // idempotent
  pool.submit({99, Drive::Continue});
  CHECK(ran == 4);
}

TEST_CASE("many threads submit many continuations: each runs exactly once") {
  std::mutex mutex;
  std::vector<int> count(4000, 0);
  WorkerPool pool(3, [&](const Continuation& c) {
    std::lock_guard lock(mutex);
    ++count[static_cast<std::size_t>(c.id)];
  });
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) pool.submit({t * 1000 + i, Drive::Continue});
    });
  }
  for (auto& s : submitters) s.join();
  pool.waitIdle();
  std::lock_guard lock(mutex);
  for (int c : count) REQUIRE(c == 1);
}
