// Mutexes that Clang's thread-safety analysis understands (internal).
//
// libstdc++'s std::mutex carries no capability attributes, so -Wthread-safety
// cannot check code that locks it. These thin wrappers (LevelDB's port::Mutex,
// Abseil's Mutex) can: a member declared ASYNCFLOW_GUARDED_BY(mutex_) may only be
// touched while mutex_ is held, and a function marked ASYNCFLOW_REQUIRES(mutex_)
// only called so. The clang presets build with -Wthread-safety as an error; other
// compilers ignore the attributes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define ASYNCFLOW_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define ASYNCFLOW_THREAD_ANNOTATION(x)
#endif

#define ASYNCFLOW_CAPABILITY(name) ASYNCFLOW_THREAD_ANNOTATION(capability(name))
#define ASYNCFLOW_SCOPED_CAPABILITY ASYNCFLOW_THREAD_ANNOTATION(scoped_lockable)
#define ASYNCFLOW_GUARDED_BY(m) ASYNCFLOW_THREAD_ANNOTATION(guarded_by(m))
#define ASYNCFLOW_PT_GUARDED_BY(m) ASYNCFLOW_THREAD_ANNOTATION(pt_guarded_by(m))
#define ASYNCFLOW_REQUIRES(...) ASYNCFLOW_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define ASYNCFLOW_REQUIRES_SHARED(...) \
  ASYNCFLOW_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define ASYNCFLOW_EXCLUDES(...) ASYNCFLOW_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASYNCFLOW_ACQUIRE(...) ASYNCFLOW_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ASYNCFLOW_ACQUIRE_SHARED(...) \
  ASYNCFLOW_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define ASYNCFLOW_RELEASE(...) ASYNCFLOW_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define ASYNCFLOW_RELEASE_SHARED(...) \
  ASYNCFLOW_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define ASYNCFLOW_RELEASE_GENERIC(...) \
  ASYNCFLOW_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define ASYNCFLOW_TRY_ACQUIRE(...) ASYNCFLOW_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define ASYNCFLOW_NO_THREAD_SAFETY_ANALYSIS ASYNCFLOW_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace asyncflow::detail {

class CondVar;

// A std::mutex the analysis can follow. Not recursive.
class ASYNCFLOW_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ASYNCFLOW_ACQUIRE() { mutex_.lock(); }
  void unlock() ASYNCFLOW_RELEASE() { mutex_.unlock(); }
  bool tryLock() ASYNCFLOW_TRY_ACQUIRE(true) { return mutex_.try_lock(); }

 private:
  friend class CondVar;
  std::mutex mutex_;
};

// Holds a Mutex for its scope; unlock() and lock() let a caller step out of the
// lock for a while (to call a handler or the store) and back in.
class ASYNCFLOW_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ASYNCFLOW_ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() ASYNCFLOW_RELEASE() {
    if (held_) mutex_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void unlock() ASYNCFLOW_RELEASE() {
    mutex_.unlock();
    held_ = false;
  }
  void lock() ASYNCFLOW_ACQUIRE() {
    mutex_.lock();
    held_ = true;
  }

 private:
  friend class CondVar;
  Mutex& mutex_;
  bool held_ = true;
};

// A condition variable waited on while holding a Mutex, through its MutexLock.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Releases the lock, waits for a notify (or a spurious wake-up), and takes the
  // lock back. Callers loop on their condition, LevelDB-style:
  //   while (!ready_) changed_.wait(lock);
  // so the analysis sees every read of guarded state under the lock.
  void wait(MutexLock& lock) {
    std::unique_lock<std::mutex> native(lock.mutex_.mutex_, std::adopt_lock);
    cv_.wait(native);
    native.release();  // the MutexLock still owns it
  }

  // As wait(), but returns after at most `timeout` of real time.
  template <class Rep, class Period>
  void waitFor(MutexLock& lock, std::chrono::duration<Rep, Period> timeout) {
    std::unique_lock<std::mutex> native(lock.mutex_.mutex_, std::adopt_lock);
    cv_.wait_for(native, timeout);
    native.release();
  }

  void notifyOne() noexcept { cv_.notify_one(); }
  void notifyAll() noexcept { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

// A std::shared_mutex the analysis can follow: many readers or one writer.
class ASYNCFLOW_CAPABILITY("shared mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock() ASYNCFLOW_ACQUIRE() { mutex_.lock(); }
  void unlock() ASYNCFLOW_RELEASE() { mutex_.unlock(); }
  void lockShared() ASYNCFLOW_ACQUIRE_SHARED() { mutex_.lock_shared(); }
  void unlockShared() ASYNCFLOW_RELEASE_SHARED() { mutex_.unlock_shared(); }

 private:
  std::shared_mutex mutex_;
};

// Holds a SharedMutex exclusively for its scope.
class ASYNCFLOW_SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(SharedMutex& mutex) ASYNCFLOW_ACQUIRE(mutex) : mutex_(mutex) {
    mutex_.lock();
  }
  ~WriterLock() ASYNCFLOW_RELEASE() { mutex_.unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  SharedMutex& mutex_;
};

// Holds a SharedMutex shared for its scope.
class ASYNCFLOW_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mutex) ASYNCFLOW_ACQUIRE_SHARED(mutex) : mutex_(mutex) {
    mutex_.lockShared();
  }
  ~ReaderLock() ASYNCFLOW_RELEASE() { mutex_.unlockShared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

 private:
  SharedMutex& mutex_;
};

}  // namespace asyncflow::detail
