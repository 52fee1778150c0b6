// fuzz_fields: field and value decoding, where fields enter the engine and the
// stores.
//
// The input is a list of fields (fuzz_support.hpp's encoding): declared and
// undeclared names (empty, with NULs, invalid UTF-8), every type, NaNs, -0.0,
// infinities, strings up to 256 KiB. An oracle computes from the declarations
// whether the fields are valid. Then, on an engine over a MemoryStore and one
// over a SqliteStore (":memory:"), each input goes through:
// - start(): valid fields start an instance whose fields read back
//   byte-identical (declared defaults overlaid, an Int64 for a Double field as a
//   double); invalid ones are InvalidField naming the first bad field in name
//   order (quoted as error messages quote names), and no instance is created;
// - completeServerEvent() and failServerEvent() on a waiting instance: the same,
//   and on refusal the instance (fields, status, history) is unchanged;
// - a step handler's writes: valid ones are kept; invalid ones fail the step
//   with a message naming the field, and no field changes;
// - the store's own write and read (Store::apply, loadInstance) with the raw,
//   unchecked fields: everything reads back byte-identical, except that a NaN
//   may come back as another NaN (SQLite keeps NaN as NULL).
// The stores are replaced every few hundred inputs to keep iterations fast.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "model/process_model.hpp"
#include "util/text.hpp"

namespace {

using namespace asyncflow;
using fuzz::broken;
using fuzz::identical;
using fuzz::shown;

// The declarations: every type, awkward names, non-null defaults.
struct Declared {
  std::string name;
  Type type;
  Value initial;
};

const std::vector<Declared>& declarations() {
  static const std::vector<Declared> all = {
      {"Text", Type::String, Value("default")},
      {"Count", Type::Int64, Value(7)},
      {"Ratio", Type::Double, Value(0.0)},
      {"Flag", Type::Bool, Value()},
      {std::string("nul\0name", 8), Type::String, Value()},
      {"\xff\xfe\x80", Type::Int64, Value()},
      {"\xc3\xa9t\xc3\xa9", Type::Double, Value(-0.0)},
      {std::string(300, 'L'), Type::String, Value(std::string(1000, 'd'))},
  };
  return all;
}

const std::vector<std::string>& declaredNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& d : declarations()) out.push_back(d.name);
    return out;
  }();
  return names;
}

// The fields a step handler writes: the current input's.
const Fields* gHandlerWrites = nullptr;

Process fieldsProcess() {
  Process p("Fields", 1);
  for (const auto& d : declarations()) p.field(d.name, d.type, d.initial);
  p.step(AsyncStep("Wait", [](AsyncStepContext&) {
     return StartOutcome::wait();
   })).step(Step("Done", [](StepContext&) { return StepOutcome::next(); }));
  return p;
}

Process writerProcess() {
  Process p("Writer", 1);
  for (const auto& d : declarations()) p.field(d.name, d.type, d.initial);
  p.step(Step("Write", [](StepContext& ctx) {
    for (const auto& [name, value] : *gHandlerWrites) ctx.fields().set(name, value);
    return StepOutcome::next();
  }));
  return p;
}

// What the engine must make of `given`: the first invalid field's name, or the
// fields as stored (an Int64 for a Double field becomes a double).
struct Verdict {
  bool valid = true;
  std::string firstInvalid;
  Fields normalized;
};

Verdict judge(const Fields& given) {
  Verdict verdict;
  for (const auto& [name, value] : given) {
    const Declared* declared = nullptr;
    for (const auto& d : declarations()) {
      if (d.name == name) declared = &d;
    }
    bool ok = declared != nullptr;
    if (ok && value.type() == Type::Double && std::isnan(*value.as<double>())) ok = false;
    if (ok && !value.isNull() && value.type() != declared->type &&
        !(declared->type == Type::Double && value.type() == Type::Int64)) {
      ok = false;
    }
    if (!ok) {
      verdict.valid = false;
      verdict.firstInvalid = name;
      return verdict;
    }
    if (declared->type == Type::Double && value.type() == Type::Int64) {
      verdict.normalized.set(name, *value.as<double>());
    } else {
      verdict.normalized.set(name, value);
    }
  }
  return verdict;
}

Fields defaults() {
  Fields out;
  for (const auto& d : declarations()) out.set(d.name, d.initial);
  return out;
}

// One engine over one store, replaced every now and then.
struct World {
  const char* label;
  std::shared_ptr<Store> store;
  std::unique_ptr<Engine> engine;
  InstanceId lastId = 0;
  std::size_t inputs = 0;
  std::size_t bytes = 0;
};

EngineOptions engineOptions() {
  EngineOptions options;
  options.timerThread = false;
  options.recoverOnDefine = false;
  return options;
}

void reset(World& world, bool sqlite) {
  world.engine.reset();
  if (sqlite) {
    auto opened = SqliteStore::open(":memory:");
    if (!opened) broken("SqliteStore opens :memory:", opened.error().toString());
    world.store = std::shared_ptr<Store>(std::move(*opened));
  } else {
    world.store = std::make_shared<MemoryStore>();
  }
  world.engine = std::make_unique<Engine>(world.store, engineOptions());
  for (const Process& p : {fieldsProcess(), writerProcess()}) {
    if (auto defined = world.engine->define(p); !defined) {
      broken("the fuzz processes define", defined.error().toString());
    }
  }
  world.lastId = 0;
  world.inputs = 0;
  world.bytes = 0;
}

std::string where(const World& world, const char* path) {
  return std::string(world.label) + ", " + path + ": ";
}

InstanceInfo infoOf(World& world, InstanceId id) {
  auto info = world.engine->instance(id);
  if (!info) broken("instance() reads a started instance", info.error().toString());
  return *info;
}

std::size_t historySize(World& world, InstanceId id) {
  auto history = world.engine->history(id);
  if (!history) broken("history() reads a started instance", history.error().toString());
  return history->size();
}

InstanceId started(World& world, std::string_view process, Fields fields = {}) {
  auto id = world.engine->start(process, std::move(fields));
  if (!id) broken("a start with no fields succeeds", id.error().toString());
  world.lastId = *id;
  return *id;
}

// A refusal: InvalidField naming the first bad field.
void requireRefusal(const World& world, const char* path, const Error& error,
                    const Verdict& verdict) {
  if (error.code != Errc::InvalidField) {
    broken("invalid fields are InvalidField", where(world, path) + error.toString());
  }
  // Messages quote names through detail::quoted: escaped, cut at 60 characters.
  if (error.message.find(detail::quoted(verdict.firstInvalid)) == std::string::npos) {
    broken("the refusal names the first invalid field",
           where(world, path) + "'" + shown(verdict.firstInvalid) +
               "' not in: " + shown(error.message, 400));
  }
}

void checkStart(World& world, const Fields& given, const Verdict& verdict) {
  auto id = world.engine->start("Fields", given);
  if (!verdict.valid) {
    if (id) broken("start refuses invalid fields", where(world, "start") + shown(given));
    requireRefusal(world, "start", id.error(), verdict);
    auto next = world.store->loadInstance(world.lastId + 1);
    if (next || next.error().code != Errc::NotFound) {
      broken("a refused start creates no instance", where(world, "start"));
    }
    return;
  }
  if (!id) {
    broken("start accepts valid fields",
           where(world, "start") + id.error().toString() + " for " + shown(given));
  }
  world.lastId = *id;
  Fields expected = defaults();
  expected.merge(verdict.normalized);
  const InstanceInfo info = infoOf(world, *id);
  if (info.status != InstanceStatus::Waiting) broken("the instance waits", where(world, "start"));
  if (!identical(info.fields, expected)) {
    broken("started fields read back byte-identical",
           where(world, "start") + "expected " + shown(expected) + ", read " + shown(info.fields));
  }
}

// completeServerEvent (fail == false) or failServerEvent on a fresh waiting instance.
void checkServerEvent(World& world, const Fields& given, const Verdict& verdict, bool failIt) {
  const char* path = failIt ? "failServerEvent" : "completeServerEvent";
  const InstanceId id = started(world, "Fields");
  const InstanceInfo before = infoOf(world, id);
  const std::size_t historyBefore = historySize(world, id);
  auto done = failIt ? world.engine->failServerEvent(before.serial, "fuzz", given)
                     : world.engine->completeServerEvent(before.serial, given);
  const InstanceInfo after = infoOf(world, id);
  if (!verdict.valid) {
    if (done) broken("invalid fields are refused", where(world, path) + shown(given));
    requireRefusal(world, path, done.error(), verdict);
    if (!identical(after.fields, before.fields) || after.status != before.status ||
        after.currentStepStatus != before.currentStepStatus ||
        after.updatedAt != before.updatedAt || historySize(world, id) != historyBefore) {
      broken("a refused server event changes nothing", where(world, path) + shown(given));
    }
    return;
  }
  if (!done) {
    broken("valid fields are accepted",
           where(world, path) + done.error().toString() + " for " + shown(given));
  }
  const InstanceStatus wanted = failIt ? InstanceStatus::Failed : InstanceStatus::Completed;
  if (after.status != wanted) {
    broken("the server event moves the instance on",
           where(world, path) + std::string(statusName(after.status)));
  }
  Fields expected = defaults();
  expected.merge(verdict.normalized);
  if (!identical(after.fields, expected)) {
    broken("the event's fields read back byte-identical",
           where(world, path) + "expected " + shown(expected) + ", read " + shown(after.fields));
  }
}

void checkHandlerWrites(World& world, const Fields& given, const Verdict& verdict) {
  gHandlerWrites = &given;
  const InstanceId id = started(world, "Writer");
  gHandlerWrites = nullptr;
  const InstanceInfo info = infoOf(world, id);
  if (!verdict.valid) {
    if (info.status != InstanceStatus::Failed) {
      broken("invalid handler writes fail the step", where(world, "handler") + shown(given));
    }
    if (info.error.find(detail::quoted(verdict.firstInvalid)) == std::string::npos) {
      broken("the failure names the first invalid field",
             where(world, "handler") + "'" + shown(verdict.firstInvalid) +
                 "' not in: " + shown(info.error, 400));
    }
    if (!identical(info.fields, defaults())) {
      broken("refused handler writes change no field",
             where(world, "handler") + shown(info.fields));
    }
    return;
  }
  if (info.status != InstanceStatus::Completed) {
    broken("valid handler writes are kept",
           where(world, "handler") + info.error + " for " + shown(given));
  }
  // A write equal (==) to the value the field holds is no write: -0.0 over 0.0
  // stays 0.0. So compare by value here, not by bytes.
  Fields expected = defaults();
  expected.merge(verdict.normalized);
  if (info.fields != expected) {
    broken("handler writes read back", where(world, "handler") + "expected " + shown(expected) +
                                           ", read " + shown(info.fields));
  }
}

// The store alone, with no checks in front: whatever it is given it keeps.
void checkStoreRoundTrip(World& world, const Fields& given) {
  ChangeSet set;
  set.instance.process = "Raw";
  set.instance.processVersion = 1;
  set.instance.status = InstanceStatus::Completed;  // nothing for an engine to drive
  set.fields = given;
  std::vector<ChangeSet> batch;
  batch.push_back(std::move(set));
  auto applied = world.store->apply(std::move(batch));
  if (!applied || applied->size() != 1 || applied->front().status != ApplyStatus::Applied) {
    broken("the store writes any fields",
           where(world, "store") + (applied ? "not applied" : applied.error().toString()) +
               " for " + shown(given));
  }
  const InstanceId id = applied->front().instance;
  world.lastId = id;
  auto loaded = world.store->loadInstance(id);
  if (!loaded)
    broken("the store reads what it wrote", where(world, "store") + loaded.error().toString());
  if (!identical(loaded->fields, given, /*anyNaN=*/true)) {
    broken("the store's fields read back byte-identical (a NaN as some NaN)",
           where(world, "store") + "wrote " + shown(given) + ", read " + shown(loaded->fields));
  }
}

std::size_t sizeOf(const Fields& fields) {
  std::size_t total = 0;
  for (const auto& [name, value] : fields) {
    total += name.size() + 16;
    if (value.type() == Type::String) total += value.as<std::string>()->size();
  }
  return total;
}

World gMemory{"MemoryStore", nullptr, nullptr};
World gSqlite{"SqliteStore", nullptr, nullptr};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::ByteReader in(data, size);
  const Fields given = fuzz::decodeFields(in, declaredNames());
  const Verdict verdict = judge(given);
  for (World* world : {&gMemory, &gSqlite}) {
    // Fresh stores now and then: at most 256 inputs or 16 MiB of field bytes.
    if (!world->engine || world->inputs >= 256 || world->bytes >= (16u << 20)) {
      reset(*world, world == &gSqlite);
    }
    ++world->inputs;
    world->bytes += 5 * sizeOf(given);
    checkStart(*world, given, verdict);
    checkServerEvent(*world, given, verdict, /*failIt=*/false);
    checkServerEvent(*world, given, verdict, /*failIt=*/true);
    checkHandlerWrites(*world, given, verdict);
    checkStoreRoundTrip(*world, given);
  }
  return 0;
}
