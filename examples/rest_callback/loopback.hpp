// What both programs of the rest_callback example share: an httplib server on
// 127.0.0.1 at a port the OS picks, and splitting a URL for httplib::Client.
#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include <httplib.h>

namespace rest_callback {

// Serves an httplib::Server on 127.0.0.1, on a port the OS picks, in a thread
// of its own; stop() (or the destructor) stops it and joins the thread. Set the
// routes up before start(). Not copyable; used by one thread.
class LoopbackServer {
 public:
  explicit LoopbackServer(httplib::Server& server) : server_(server) {}
  ~LoopbackServer() { stop(); }
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  // Binds and starts serving. Returns the port, or -1 when binding failed.
  int start() {
    const int port = server_.bind_to_any_port("127.0.0.1");
    if (port < 0) return -1;
    thread_ = std::thread([this] {
      server_.listen_after_bind();
      returned_ = true;
    });
    return port;
  }

  // Stops serving and waits for the serving thread. Idempotent.
  void stop() {
    if (!thread_.joinable()) return;
    // httplib 0.11 ignores stop() until listen_after_bind has marked the server
    // running, which it does first thing; a stop() before that would be lost.
    while (!returned_ && !server_.is_running()) std::this_thread::yield();
    server_.stop();
    thread_.join();
  }

 private:
  httplib::Server& server_;
  std::thread thread_;
  std::atomic<bool> returned_{false};
};

// "http://127.0.0.1:8080/a/b" -> {"http://127.0.0.1:8080", "/a/b"}: what
// httplib::Client and its Post take. Empty for anything but an http URL.
inline std::optional<std::pair<std::string, std::string>> splitUrl(const std::string& url) {
  const std::string scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0) return std::nullopt;
  const auto slash = url.find('/', scheme.size());
  if (slash == std::string::npos) return std::make_pair(url, std::string("/"));
  return std::make_pair(url.substr(0, slash), url.substr(slash));
}

}  // namespace rest_callback
