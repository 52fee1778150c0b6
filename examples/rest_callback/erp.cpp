// rest_callback_erp: the external system of the rest_callback example, a small
// HTTP server on 127.0.0.1 that the host's async step calls.
//
//   POST /orders {"serialNumber", "callbackUrl", "orderId"}
//        -> 202 {"ticket": "ERP-7001"}, and then, on the ERP's worker thread,
//           POST {callbackUrl}/finish {"dataFields": {"ApprovedBy", "ErpStatus"}}
//           with the X-API-Key header: the host's asyncflow::rest route.
//        -> 500 {"error": ...} for an order named by --refuse (the failure path)
//   POST /stop -> 204, and the program exits
//
// The first line it prints is "[erp] listening on http://127.0.0.1:PORT" (the
// OS picks the port), so `rest_callback_erp | rest_callback_host --erp -` finds it.
//
// Usage: rest_callback_erp [--refuse ORDER_ID]... [--manual] [--api-key KEY] [--work-ms MS]
//   --refuse ID   answer 500 for order ID
//   --manual      accept orders but never call back: finish the steps with curl
//   --work-ms MS  how long the ERP works on an order before calling back (200)
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <iostream>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "loopback.hpp"

namespace {

using nlohmann::json;
using rest_callback::splitUrl;

std::mutex printMutex;
template <class... Parts>
void say(const Parts&... parts) {
  std::lock_guard lock(printMutex);
  (std::cout << ... << parts) << std::endl;  // a line at a time: stdout may be a pipe
}

// json::dump that never throws on invalid UTF-8 in a string.
std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

struct Options {
  std::set<std::string> refuse;
  bool manual = false;
  std::string apiKey = "demo-key";
  std::chrono::milliseconds workTime{200};
};

// Calls the host back, one job at a time, on a thread of its own: the order's
// HTTP answer is never held up by the callback.
class Callbacks {
 public:
  struct Job {
    std::string callbackUrl;
    std::string orderId;
  };

  Callbacks(std::string apiKey, std::chrono::milliseconds workTime)
      : apiKey_(std::move(apiKey)), workTime_(workTime), worker_([this] { run(); }) {}
  ~Callbacks() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_one();
    worker_.join();
  }
  Callbacks(const Callbacks&) = delete;
  Callbacks& operator=(const Callbacks&) = delete;

  void add(Job job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and nothing left to call back
        job = std::move(jobs_.front());
        jobs_.pop_front();
        // The ERP's own work on the order (cut short when the ERP stops). Only
        // for the story: the host is correct whenever the callback comes.
        ready_.wait_for(lock, workTime_, [this] { return stopping_; });
      }
      finish(job);
    }
  }

  // The ERP's side of K2's "Finish Server Event": the order is approved.
  void finish(const Job& job) {
    const std::string url = job.callbackUrl + "/finish";
    const json body = {
        {"dataFields", {{"ApprovedBy", "erp-approvals"}, {"ErpStatus", "Approved"}}}};
    try {
      const auto target = splitUrl(url);  // checked when the order came in
      httplib::Client client(target->first);
      client.set_connection_timeout(std::chrono::seconds(2));
      client.set_read_timeout(std::chrono::seconds(10));
      const httplib::Headers headers = {{"X-API-Key", apiKey_}};
      say("  [erp]    order ", job.orderId, " approved; POST ", url, " ", dump(body));
      auto answer = client.Post(target->second, headers, dump(body), "application/json");
      if (!answer) {
        say("  [erp]    callback for ", job.orderId,
            " failed: ", httplib::to_string(answer.error()));
      } else {
        say("  [erp]    callback for ", job.orderId, " answered HTTP ", answer->status,
            answer->body.empty() ? "" : " ", answer->body);
      }
    } catch (const std::exception& e) {
      say("  [erp]    callback for ", job.orderId, " failed: ", e.what());
    }
  }

  std::string apiKey_;
  std::chrono::milliseconds workTime_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::thread worker_;  // last: it starts in the constructor and uses the members above
};

void answer(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

// POST /orders: accept the order (202 with a ticket) or refuse it (500), and
// queue the callback.
void takeOrder(const httplib::Request& req, httplib::Response& res, const Options& options,
               Callbacks& callbacks, std::atomic<int>& tickets) {
  const json order = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!order.is_object() || !order.contains("serialNumber") || !order["serialNumber"].is_string() ||
      !order.contains("callbackUrl") || !order["callbackUrl"].is_string() ||
      !order.contains("orderId") || !order["orderId"].is_string()) {
    return answer(res, 400, {{"error", "expected {serialNumber, callbackUrl, orderId} strings"}});
  }
  const std::string serial = order["serialNumber"];
  const std::string callbackUrl = order["callbackUrl"];
  const std::string orderId = order["orderId"];
  // The ERP calls back only on loopback: a callback URL is a request to make,
  // and an open ERP would make it anywhere.
  if (callbackUrl.rfind("http://127.0.0.1:", 0) != 0) {
    return answer(res, 400, {{"error", "callbackUrl must be http://127.0.0.1:..."}});
  }
  if (options.refuse.count(orderId) != 0) {
    say("  [erp]    order ", orderId, " refused (--refuse): answering HTTP 500");
    return answer(res, 500, {{"error", "purchasing blocked for order " + orderId}});
  }
  const std::string ticket = "ERP-" + std::to_string(tickets.fetch_add(1) + 1);
  say("  [erp]    order ", orderId, " accepted as ", ticket, ", serial ", serial);
  answer(res, 202, {{"ticket", ticket}});
  if (options.manual) {
    say("  [erp]    --manual: not calling back; finish ", serial, " by hand");
  } else {
    callbacks.add({callbackUrl, orderId});
  }
}

bool parseArgs(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--manual") {
      options.manual = true;
    } else if (arg == "--refuse" && i + 1 < argc) {
      options.refuse.insert(argv[++i]);
    } else if (arg == "--api-key" && i + 1 < argc) {
      options.apiKey = argv[++i];
    } else if (arg == "--work-ms" && i + 1 < argc) {
      options.workTime = std::chrono::milliseconds(std::atoi(argv[++i]));
    } else {
      return false;
    }
  }
  return true;
}

int run(const Options& options) {
  std::atomic<int> tickets{7000};
  Callbacks callbacks(options.apiKey, options.workTime);

  std::mutex stopMutex;
  std::condition_variable stopAsked;
  bool stop = false;

  httplib::Server server;
  server.set_payload_max_length(64 * 1024);
  server.Post("/orders", [&](const httplib::Request& req, httplib::Response& res) {
    try {
      takeOrder(req, res, options, callbacks, tickets);
    } catch (const std::exception& e) {  // httplib would answer 500 too; say why
      answer(res, 500, {{"error", e.what()}});
    }
  });
  server.Post("/stop", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 204;
    {
      std::lock_guard lock(stopMutex);
      stop = true;
    }
    stopAsked.notify_one();
  });

  rest_callback::LoopbackServer serving(server);
  const int port = serving.start();
  if (port < 0) {
    std::cerr << "[erp] cannot bind 127.0.0.1\n";
    return EXIT_FAILURE;
  }
  say("[erp] listening on http://127.0.0.1:", port);

  std::unique_lock lock(stopMutex);
  stopAsked.wait(lock, [&] { return stop; });
  lock.unlock();
  serving.stop();  // no new orders; the destructor of callbacks drains the queue
  say("  [erp]    stopping (POST /stop)");
  return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  if (!parseArgs(argc, argv, options)) {
    std::cerr << "usage: rest_callback_erp [--refuse ORDER_ID]... [--manual] [--api-key KEY] "
                 "[--work-ms MS]\n";
    return 2;
  }
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::cerr << "[erp] error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
