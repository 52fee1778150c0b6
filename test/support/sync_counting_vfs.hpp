// A SQLite VFS for tests: forwards to the default VFS, counts xSync calls on WAL
// files (one per commit at synchronous=FULL) and can fail them on purpose.
#pragma once

#include <atomic>

#include <sqlite3.h>

#include "support/catch.hpp"

namespace asyncflow::testing {

// Counts (and fails) what the store's own connection does: a second connection
// cannot read its per-connection PRAGMA synchronous, nor see its commits' fsyncs.
struct SyncCountingVfs {
  struct File {
    sqlite3_file base;
    sqlite3_file* real;  // allocated right after this struct
    bool wal;
  };

  static inline std::atomic<int> walSyncs{0};
  // When positive, the WAL xSync that brings walSyncs to this number fails with
  // SQLITE_IOERR_FSYNC (the disk refused to persist the commit).
  static inline std::atomic<int> failWalSync{0};
  static inline sqlite3_vfs* realVfs = nullptr;
  static inline sqlite3_vfs vfs{};
  static inline sqlite3_io_methods methods{};

  static sqlite3_file* real(sqlite3_file* f) { return reinterpret_cast<File*>(f)->real; }

  static int open(sqlite3_vfs*, const char* name, sqlite3_file* f, int flags, int* outFlags) {
    File* file = reinterpret_cast<File*>(f);
    file->real = reinterpret_cast<sqlite3_file*>(file + 1);
    file->wal = (flags & SQLITE_OPEN_WAL) != 0;
    const int rc = realVfs->xOpen(realVfs, name, file->real, flags, outFlags);
    file->base.pMethods = file->real->pMethods != nullptr ? &methods : nullptr;
    return rc;
  }

  // Registers this VFS as the default one until the guard ends.
  struct Installed {
    Installed() {
      realVfs = sqlite3_vfs_find(nullptr);
      vfs = *realVfs;
      vfs.zName = "asyncflow-test-sync-counting";
      vfs.szOsFile = static_cast<int>(sizeof(File)) + realVfs->szOsFile;
      vfs.xOpen = &SyncCountingVfs::open;
      // Version 3, like the files of the default (unix) VFS: WAL needs xShm*.
      methods = sqlite3_io_methods{
          3,
          [](sqlite3_file* f) {
            const int rc = real(f)->pMethods->xClose(real(f));
            f->pMethods = nullptr;
            return rc;
          },
          [](sqlite3_file* f, void* p, int n, sqlite3_int64 o) {
            return real(f)->pMethods->xRead(real(f), p, n, o);
          },
          [](sqlite3_file* f, const void* p, int n, sqlite3_int64 o) {
            return real(f)->pMethods->xWrite(real(f), p, n, o);
          },
          [](sqlite3_file* f, sqlite3_int64 size) {
            return real(f)->pMethods->xTruncate(real(f), size);
          },
          [](sqlite3_file* f, int flags) {
            if (reinterpret_cast<File*>(f)->wal && ++walSyncs == failWalSync) {
              return SQLITE_IOERR_FSYNC;
            }
            return real(f)->pMethods->xSync(real(f), flags);
          },
          [](sqlite3_file* f, sqlite3_int64* size) {
            return real(f)->pMethods->xFileSize(real(f), size);
          },
          [](sqlite3_file* f, int lock) { return real(f)->pMethods->xLock(real(f), lock); },
          [](sqlite3_file* f, int lock) { return real(f)->pMethods->xUnlock(real(f), lock); },
          [](sqlite3_file* f, int* out) {
            return real(f)->pMethods->xCheckReservedLock(real(f), out);
          },
          [](sqlite3_file* f, int op, void* arg) {
            return real(f)->pMethods->xFileControl(real(f), op, arg);
          },
          [](sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); },
          [](sqlite3_file* f) { return real(f)->pMethods->xDeviceCharacteristics(real(f)); },
          [](sqlite3_file* f, int page, int size, int extend, void volatile** out) {
            return real(f)->pMethods->xShmMap(real(f), page, size, extend, out);
          },
          [](sqlite3_file* f, int offset, int n, int flags) {
            return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
          },
          [](sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); },
          [](sqlite3_file* f, int deleteFlag) {
            return real(f)->pMethods->xShmUnmap(real(f), deleteFlag);
          },
          [](sqlite3_file* f, sqlite3_int64 o, int n, void** out) {
            return real(f)->pMethods->xFetch(real(f), o, n, out);
          },
          [](sqlite3_file* f, sqlite3_int64 o, void* p) {
            return real(f)->pMethods->xUnfetch(real(f), o, p);
          },
      };
      REQUIRE(sqlite3_vfs_register(&vfs, 1) == SQLITE_OK);
    }
    ~Installed() {
      failWalSync = 0;
      sqlite3_vfs_unregister(&vfs);
      sqlite3_vfs_register(realVfs, 1);
    }
  };
};

}  // namespace asyncflow::testing
