// Pins CommitQueue, the store-side group commit, with no database: a fake
// write-group callback records the groups it is handed and answers each batch.
// A lone caller is written alone at once; callers that arrive while a group is
// written form the next group, in arrival order, up to maxGroupSize; each
// caller gets exactly its own result; a writer's failure reaches the callers
// it concerns and strands none. Groups are made deterministic by holding the
// leader inside the callback (a latch) while the test queues callers behind it,
// each one seen in queued() before the next starts; nothing sleeps.
#include "store/commit_queue.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/test_support.hpp"

namespace {

using namespace asyncflow;
using asyncflow::detail::CommitQueue;
using asyncflow::testing::contains;
using asyncflow::testing::Latch;

using Outcome = Result<std::vector<ApplyResult>>;

// A batch of `size` change sets tagged tag, tag + 1, ... in instance.id, so a
// batch and its result can be told apart from every other.
std::vector<ChangeSet> batchOf(InstanceId tag, std::size_t size = 1) {
  std::vector<ChangeSet> batch(size);
  for (std::size_t i = 0; i < size; ++i) batch[i].instance.id = tag + static_cast<InstanceId>(i);
  return batch;
}

// What the fake store answers for a batch: each set Applied, its tag as the instance.
std::vector<ApplyResult> echo(const std::vector<ChangeSet>& batch) {
  std::vector<ApplyResult> results;
  for (const ChangeSet& set : batch) {
    results.push_back(ApplyResult{ApplyStatus::Applied, set.instance.id});
  }
  return results;
}

// Results as comparable, printable values: (applied, instance) per set.
std::vector<std::pair<bool, InstanceId>> flat(const std::vector<ApplyResult>& results) {
  std::vector<std::pair<bool, InstanceId>> out;
  for (const ApplyResult& r : results)
    out.emplace_back(r.status == ApplyStatus::Applied, r.instance);
  return out;
}

void echoAll(CommitQueue::Group& group) {
  for (CommitQueue::Member& member : group) member.setResult(echo(member.batch()));
}

// One group as the fake store saw it.
struct WrittenGroup {
  std::vector<InstanceId> tags;  // the first tag of each member's batch, in group order
  std::thread::id thread;        // the leader's thread, which ran the callback
};

// The fake store's write-group callback: records each group, optionally holds
// one inside the callback until released, then answers with `answer`.
class GroupRecorder {
 public:
  explicit GroupRecorder(std::function<void(CommitQueue::Group&)> answer = echoAll)
      : answer_(std::move(answer)) {}

  // The callback to give CommitQueue::submit.
  CommitQueue::WriteGroup callback() {
    return [this](CommitQueue::Group& group) { write(group); };
  }

  // The next group waits inside the callback, already recorded, until release().
  void holdNextGroup() { holdNext_ = true; }
  void waitUntilHeld() { held_.wait(); }
  void release() { released_.countDown(); }

  // The groups written so far, in the order they were written.
  std::vector<WrittenGroup> groups() const {
    std::lock_guard lock(mutex_);
    return groups_;
  }

 private:
  void write(CommitQueue::Group& group) {
    WrittenGroup written;
    for (CommitQueue::Member& member : group) {
      written.tags.push_back(member.batch().empty() ? 0 : member.batch().front().instance.id);
    }
    written.thread = std::this_thread::get_id();
    {
      std::lock_guard lock(mutex_);
      groups_.push_back(std::move(written));
    }
    if (holdNext_.exchange(false)) {
      held_.countDown();
      released_.wait();
    }
    answer_(group);
  }

  std::function<void(CommitQueue::Group&)> answer_;
  std::atomic<bool> holdNext_{false};
  Latch held_;
  Latch released_;
  mutable std::mutex mutex_;
  std::vector<WrittenGroup> groups_;
};

// submit() calls, each on its own thread, in the order they were started. Joins
// them all when it ends. Catch2 assertions stay on the test's thread.
class Callers {
 public:
  Callers(CommitQueue& queue, GroupRecorder& recorder) : queue_(queue), recorder_(recorder) {}
  ~Callers() { join(); }
  Callers(const Callers&) = delete;
  Callers& operator=(const Callers&) = delete;

  // Starts submit(batch) as the leader of a group that the recorder holds
  // inside the callback; returns once it is held there.
  void lead(std::vector<ChangeSet> batch) {
    recorder_.holdNextGroup();
    start(std::move(batch));
    recorder_.waitUntilHeld();
  }

  // Starts submit(batch) and waits until it is in the queue, behind the calls
  // started before it.
  void queue(std::vector<ChangeSet> batch) {
    const std::size_t queued = queue_.queued();
    start(std::move(batch));
    while (queue_.queued() <= queued) std::this_thread::yield();
  }

  void join() {
    for (std::thread& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

  // The outcome of the i-th call; only after join().
  const Outcome& outcome(std::size_t i) const { return slots_.at(i)->outcome; }
  // The thread the i-th call ran on (kept: a joined std::thread forgets its id).
  std::thread::id threadId(std::size_t i) const { return ids_.at(i); }

 private:
  struct Slot {
    Outcome outcome;
  };

  void start(std::vector<ChangeSet> batch) {
    slots_.push_back(std::make_unique<Slot>());
    threads_.emplace_back([this, &slot = *slots_.back(), batch = std::move(batch)]() mutable {
      slot.outcome = queue_.submit(std::move(batch), recorder_.callback());
    });
    ids_.push_back(threads_.back().get_id());
  }

  CommitQueue& queue_;
  GroupRecorder& recorder_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<std::thread> threads_;
  std::vector<std::thread::id> ids_;
};

}  // namespace

TEST_CASE("a lone caller's batch is written at once, alone, on the caller's thread") {
  CommitQueue queue(256);
  GroupRecorder recorder;
  const std::vector<ChangeSet> batch = batchOf(10, 3);
  const Outcome outcome = queue.submit(batch, recorder.callback());
  REQUIRE(outcome);
  CHECK(flat(*outcome) == flat(echo(batch)));
  const std::vector<WrittenGroup> groups = recorder.groups();
  REQUIRE(groups.size() == 1);
  CHECK(groups[0].tags == std::vector<InstanceId>{10});
  CHECK(groups[0].thread == std::this_thread::get_id());
  CHECK(queue.queued() == 0);

  // And again: a caller never waits for company, one group per call.
  REQUIRE(queue.submit(batchOf(20), recorder.callback()));
  CHECK(recorder.groups().size() == 2);
}

TEST_CASE("callers queued behind a held leader form the next group, in arrival order") {
  CommitQueue queue(256);
  GroupRecorder recorder;
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag : {2, 3, 4, 5}) callers.queue(batchOf(tag));
  CHECK(queue.queued() == 5);  // the group being written and the four behind it
  recorder.release();
  callers.join();

  const std::vector<WrittenGroup> groups = recorder.groups();
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].tags == std::vector<InstanceId>{1});
  CHECK(groups[1].tags == std::vector<InstanceId>{2, 3, 4, 5});
  // The first to arrive behind the leader leads the next group, on its own thread.
  CHECK(groups[0].thread == callers.threadId(0));
  CHECK(groups[1].thread == callers.threadId(1));
  for (std::size_t i = 0; i < 5; ++i) {
    INFO("caller " << i);
    REQUIRE(callers.outcome(i));
    CHECK(flat(*callers.outcome(i)) == flat(echo(batchOf(static_cast<InstanceId>(i) + 1))));
  }
  CHECK(queue.queued() == 0);
}

TEST_CASE("maxGroupSize caps a group, and the callers beyond it form the following groups") {
  CommitQueue queue(3);
  GroupRecorder recorder;
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag = 2; tag <= 8; ++tag) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  const std::vector<WrittenGroup> groups = recorder.groups();
  REQUIRE(groups.size() == 4);
  CHECK(groups[0].tags == std::vector<InstanceId>{1});
  CHECK(groups[1].tags == std::vector<InstanceId>{2, 3, 4});
  CHECK(groups[2].tags == std::vector<InstanceId>{5, 6, 7});
  CHECK(groups[3].tags == std::vector<InstanceId>{8});
  for (std::size_t i = 0; i < 8; ++i) {
    INFO("caller " << i);
    REQUIRE(callers.outcome(i));
    CHECK(flat(*callers.outcome(i)) == flat(echo(batchOf(static_cast<InstanceId>(i) + 1))));
  }
}

TEST_CASE("maxGroupSize 1 or 0 turns grouping off: one batch per group, in arrival order") {
  const std::size_t maxGroupSize = GENERATE(std::size_t{0}, std::size_t{1});
  INFO("maxGroupSize " << maxGroupSize);
  CommitQueue queue(maxGroupSize);
  GroupRecorder recorder;
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag = 2; tag <= 5; ++tag) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  const std::vector<WrittenGroup> groups = recorder.groups();
  REQUIRE(groups.size() == 5);
  for (std::size_t i = 0; i < groups.size(); ++i) {
    CHECK(groups[i].tags == std::vector<InstanceId>{static_cast<InstanceId>(i) + 1});
    CHECK(groups[i].thread == callers.threadId(i));  // each caller writes its own
  }
}

TEST_CASE("each caller of a group gets exactly its own batch's result") {
  CommitQueue queue(256);
  GroupRecorder recorder;
  Callers callers(queue, recorder);
  callers.lead(batchOf(100, 2));
  callers.queue(batchOf(200, 1));
  callers.queue(batchOf(300, 4));
  callers.queue(batchOf(400, 3));
  recorder.release();
  callers.join();

  REQUIRE(recorder.groups().size() == 2);
  const std::vector<std::vector<ChangeSet>> batches = {batchOf(100, 2), batchOf(200, 1),
                                                       batchOf(300, 4), batchOf(400, 3)};
  for (std::size_t i = 0; i < batches.size(); ++i) {
    INFO("caller " << i);
    REQUIRE(callers.outcome(i));
    CHECK(flat(*callers.outcome(i)) == flat(echo(batches[i])));
  }
}

TEST_CASE("the writer sees the callers' batches and may write into them") {
  CommitQueue queue(256);
  GroupRecorder recorder([](CommitQueue::Group& group) {
    // As a store assigns ids on create: the caller's batch is the writer's to fill.
    for (CommitQueue::Member& member : group) {
      for (ChangeSet& set : member.batch()) set.instance.version = 7;
      std::vector<ApplyResult> results;
      for (const ChangeSet& set : member.batch()) {
        results.push_back(
            ApplyResult{set.instance.version == 7 ? ApplyStatus::Applied : ApplyStatus::Conflict,
                        set.instance.id});
      }
      member.setResult(std::move(results));
    }
  });
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  callers.queue(batchOf(2, 2));
  recorder.release();
  callers.join();
  REQUIRE(callers.outcome(1));
  CHECK(flat(*callers.outcome(1)) == flat(echo(batchOf(2, 2))));
}

TEST_CASE("an error the writer sets for one member reaches that member only") {
  CommitQueue queue(256);
  GroupRecorder recorder([](CommitQueue::Group& group) {
    for (CommitQueue::Member& member : group) {
      if (member.batch().front().instance.id == 3) {
        member.setResult(fail(Errc::StoreError, "refused batch 3"));
      } else {
        member.setResult(echo(member.batch()));
      }
    }
  });
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag : {2, 3, 4}) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  REQUIRE(recorder.groups().size() == 2);
  for (std::size_t i = 0; i < 4; ++i) {
    INFO("caller " << i);
    const InstanceId tag = static_cast<InstanceId>(i) + 1;
    if (tag == 3) {
      REQUIRE_FALSE(callers.outcome(i));
      CHECK(callers.outcome(i).error() == Error(Errc::StoreError, "refused batch 3"));
    } else {
      REQUIRE(callers.outcome(i));
      CHECK(flat(*callers.outcome(i)) == flat(echo(batchOf(tag))));
    }
  }
}

TEST_CASE("a group that fails as a whole fails every member of it, and no other") {
  CommitQueue queue(256);
  const Error lost(Errc::StoreError, "apply (nothing was written): disk I/O error");
  GroupRecorder recorder([&](CommitQueue::Group& group) {
    echoAll(group);  // as a store that wrote each savepoint, then lost the COMMIT
    if (group.size() > 1) group.failAll(lost);
  });
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag : {2, 3, 4}) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  REQUIRE(callers.outcome(0));
  CHECK(flat(*callers.outcome(0)) == flat(echo(batchOf(1))));
  for (std::size_t i = 1; i < 4; ++i) {
    INFO("caller " << i);
    REQUIRE_FALSE(callers.outcome(i));
    CHECK(callers.outcome(i).error() == lost);
  }
}

TEST_CASE("an empty batch returns at once, without queueing or reaching the writer") {
  CommitQueue queue(256);
  GroupRecorder recorder;
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));  // a group in flight: a non-empty batch would have to wait
  const Outcome empty = queue.submit({}, recorder.callback());
  REQUIRE(empty);
  CHECK(empty->empty());
  CHECK(queue.queued() == 1);
  recorder.release();
  callers.join();
  CHECK(recorder.groups().size() == 1);
}

TEST_CASE("a writer that throws fails its group's callers instead of stranding them") {
  CommitQueue queue(256);
  GroupRecorder recorder([](CommitQueue::Group& group) {
    if (group.size() > 1) throw std::runtime_error("injected");
    echoAll(group);
  });
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag : {2, 3, 4}) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  REQUIRE(callers.outcome(0));
  for (std::size_t i = 1; i < 4; ++i) {
    INFO("caller " << i);
    REQUIRE_FALSE(callers.outcome(i));
    CHECK(callers.outcome(i).error().code == Errc::Internal);
    CHECK(contains(callers.outcome(i).error().message, "threw"));
  }
  // The queue goes on.
  CHECK(queue.queued() == 0);
  const Outcome after = queue.submit(batchOf(5), recorder.callback());
  REQUIRE(after);
  CHECK(flat(*after) == flat(echo(batchOf(5))));
}

TEST_CASE("a member the writer leaves without a result fails with Internal") {
  CommitQueue queue(256);
  GroupRecorder recorder([](CommitQueue::Group& group) {
    for (CommitQueue::Member& member : group) {
      if (member.batch().front().instance.id != 3) member.setResult(echo(member.batch()));
    }
  });
  Callers callers(queue, recorder);
  callers.lead(batchOf(1));
  for (InstanceId tag : {2, 3, 4}) callers.queue(batchOf(tag));
  recorder.release();
  callers.join();

  REQUIRE(callers.outcome(1));
  REQUIRE_FALSE(callers.outcome(2));
  CHECK(callers.outcome(2).error().code == Errc::Internal);
  CHECK(contains(callers.outcome(2).error().message, "no result"));
  REQUIRE(callers.outcome(3));
}

TEST_CASE("many threads submitting many batches: every result delivered exactly once") {
  constexpr std::size_t kMaxGroupSize = 4;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 300;
  CommitQueue queue(kMaxGroupSize);
  std::mutex writtenMutex;
  std::multiset<InstanceId> written;  // every set tag the writer saw
  std::size_t largestGroup = 0;
  GroupRecorder recorder([&](CommitQueue::Group& group) {
    {
      std::lock_guard lock(writtenMutex);
      largestGroup = std::max(largestGroup, group.size());
      for (CommitQueue::Member& member : group) {
        for (const ChangeSet& set : member.batch()) written.insert(set.instance.id);
      }
    }
    echoAll(group);
  });

  // Thread t's i-th batch holds 1 to 3 sets tagged from t * 1'000'000 + i * 10.
  const auto tagOf = [](int t, int i) { return InstanceId{t} * 1'000'000 + InstanceId{i} * 10; };
  const auto sizeOf = [](int t, int i) { return static_cast<std::size_t>((t + i) % 3 + 1); };
  std::vector<int> wrong(kThreads, 0);
  Latch ready(kThreads);
  Latch go;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.countDown();
      go.wait();
      for (int i = 0; i < kPerThread; ++i) {
        const std::vector<ChangeSet> batch = batchOf(tagOf(t, i), sizeOf(t, i));
        const Outcome outcome = queue.submit(batch, recorder.callback());
        if (!outcome || flat(*outcome) != flat(echo(batch))) ++wrong[t];
      }
    });
  }
  ready.wait();
  go.countDown();
  for (std::thread& thread : threads) thread.join();

  for (int t = 0; t < kThreads; ++t) CHECK(wrong[t] == 0);
  CHECK(queue.queued() == 0);
  CHECK(largestGroup <= kMaxGroupSize);
  std::size_t expectedSets = 0;
  std::size_t notWrittenOnce = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      for (std::size_t k = 0; k < sizeOf(t, i); ++k) {
        if (written.count(tagOf(t, i) + static_cast<InstanceId>(k)) != 1) ++notWrittenOnce;
        ++expectedSets;
      }
    }
  }
  CHECK(notWrittenOnce == 0);
  CHECK(written.size() == expectedSets);
}
