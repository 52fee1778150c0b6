// Mounts asyncflow::rest's routes on a cpp-httplib server and checks that an
// unauthenticated call over loopback is refused. Exits nonzero otherwise.
#include <cstdio>
#include <memory>
#include <thread>

#include <asyncflow/asyncflow.hpp>
#include <asyncflow/rest.hpp>
#include <httplib.h>

int main() {
  asyncflow::Engine engine(std::make_shared<asyncflow::MemoryStore>());
  httplib::Server server;
  asyncflow::rest::Options options;
  options.authorizer = asyncflow::rest::apiKeyAuthorizer({"consumer-key"});
  if (auto mounted = asyncflow::rest::mount(server, engine, options); !mounted) {
    std::fprintf(stderr, "consumer_rest: %s\n", mounted.error().toString().c_str());
    return 1;
  }
  const int port = server.bind_to_any_port("127.0.0.1");
  if (port <= 0) return 1;
  std::thread listener([&] { server.listen_after_bind(); });
  const auto response =
      httplib::Client("127.0.0.1", port).Post("/api/workflow/v1/serverEvents/1_1_x/finish");
  while (!server.is_running()) std::this_thread::yield();
  server.stop();
  listener.join();
  if (!response || response->status != 401) {
    std::fprintf(stderr, "consumer_rest: expected 401, got %d\n", response ? response->status : -1);
    return 1;
  }
  return 0;
}
