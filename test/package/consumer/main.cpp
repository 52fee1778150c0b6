// Defines a one-step process, runs it on a MemoryStore and checks that the
// instance completed with the field its step wrote. Exits nonzero otherwise.
#include <cstdio>
#include <memory>
#include <string>

#include <asyncflow/asyncflow.hpp>

namespace {

int failWith(const std::string& what) {
  std::fprintf(stderr, "consumer: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main() {
  asyncflow::Process greet("Greet", 1);
  greet.field("Name", asyncflow::Type::String)
      .field("Greeting", asyncflow::Type::String)
      .step(asyncflow::Step("SayHello", [](asyncflow::StepContext& ctx) {
        auto name = ctx.fields().get<std::string>("Name");
        if (!name) return asyncflow::StepOutcome::fail(name.error().message);
        ctx.fields().set("Greeting", "Hello, " + *name);
        return asyncflow::StepOutcome::next();
      }));

  asyncflow::Engine engine(std::make_shared<asyncflow::MemoryStore>());
  if (auto defined = engine.define(greet); !defined) {
    return failWith("define: " + defined.error().toString());
  }
  auto id = engine.start("Greet", {{"Name", "asyncflow"}});
  if (!id) return failWith("start: " + id.error().toString());

  auto info = engine.instance(*id);
  if (!info) return failWith("instance: " + info.error().toString());
  if (info->status != asyncflow::InstanceStatus::Completed) {
    return failWith("instance is " + std::string(asyncflow::statusName(info->status)) +
                    ", not Completed: " + info->error);
  }
  if (info->fields.getOr<std::string>("Greeting", "") != "Hello, asyncflow") {
    return failWith("the step's write was not kept");
  }
  std::printf("consumer: asyncflow %s ran instance %lld to completion\n", ASYNCFLOW_VERSION_STRING,
              static_cast<long long>(*id));
  return 0;
}
