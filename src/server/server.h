#pragma once
// moondream-server's HTTP side: the API on the main port (health, OpenAI chat
// completions, Moondream caption/query/detect/point/gaze) and the backend API
// on the backend port (profile switching, Prometheus metrics). Requests are
// validated and their images decoded on the HTTP threads; inference runs in
// InferenceQueue (engine.h). One class, its parts in one file per job:
//   server.cpp         lifecycle, profiles, images and jobs of requests
//   http_front.cpp     the route table, limits, API keys, CORS, access log, web page
//   moondream_api.cpp  the Moondream API's wire format
//   openai_api.cpp     OpenAI chat completions and models
//   admin.cpp          health, config (profile switch), metrics
//   wire.h             what they share: JSON/SSE helpers, run_and_respond
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "server/config.h"
#include "server/engine.h"
#include "server/metrics.h"

namespace httplib {
class Server;
class ContentReader;
struct Request;
struct Response;
}  // namespace httplib

namespace md::server {

class HttpServer;

extern const char* const kServerVersion;

struct ServerOptions {
  std::string config_path;  // the startup profile's file ("" = built-in defaults)
  std::string configs_dir;  // where profiles live
  ConfigOverrides overrides;
  std::string pid_file;
  std::string instance;  // random id, also in the pid file and /health
  // When the startup model is a hub repo id that cannot be fetched (no
  // network, hub down, not cached), serve this local directory instead so a
  // first start still answers; /health says so ("fallback_from").
  std::string fallback_model;
};

// An active configuration: immutable once published.
struct Profile {
  std::string name;  // file stem, "default" without a file
  std::string path;
  ServerConfig cfg;
  std::shared_ptr<LoadedModel> model;  // null while the startup model loads
};

struct RequestInfo;

class Server {
 public:
  Server(ServerOptions opts, ServerConfig cfg, std::string profile_name);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds both ports; throws md::Error naming the port on failure.
  void bind();
  // Starts serving (status "loading" until load_startup_model() returns).
  void start();
  // Resolves and loads the startup profile's model; throws md::Error.
  void load_startup_model();
  // Graceful: stop accepting, finish in-flight requests, stop the worker.
  void stop();

  std::shared_ptr<const Profile> active() const;

 private:
  // One endpoint of one port. The table (http_front.cpp, routes()) registers
  // every handler and answers what else is asked of a path: 405 with its
  // Allow list, the endpoint label of metrics and logs, the index at GET /.
  struct Route {
    bool backend;        // the backend port, else the API port
    std::string method;  // GET, POST or PATCH
    std::string path;    // "/v1/models/{id}": a trailing {param} matches any rest (req.matches[1])
    bool listed;         // in the endpoint index at GET /
    std::function<void(const httplib::Request&, httplib::Response&, const std::string& body)> handler;
  };
  std::vector<Route> route_table_;
  void routes();
  // The first route serving `path` on a port (any method).
  const Route* find_route(const std::string& path, bool backend) const;
  // "GET, PATCH": the methods `path` answers on a port; empty: unknown path.
  std::string allowed_methods(const std::string& path, bool backend) const;
  void common_handlers(httplib::Server& s, bool backend);

  // Handlers.
  void web_page(const httplib::Request& req, httplib::Response& res);
  void health(const httplib::Request& req, httplib::Response& res);
  void models(const httplib::Request& req, httplib::Response& res);
  void moondream_task(const httplib::Request& req, const std::string& body, httplib::Response& res, Task task);
  void chat_completions(const httplib::Request& req, const std::string& body, httplib::Response& res);
  void get_config(const httplib::Request& req, httplib::Response& res);
  void patch_config(const httplib::Request& req, const std::string& body, httplib::Response& res);
  void metrics(const httplib::Request& req, httplib::Response& res);

  // Helpers.
  // Reads the body through `reader` (any content type), refusing more than
  // the active profile's limits.max_body_bytes with a 413.
  std::string read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader);
  void with_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                 const std::function<void(const std::string&)>& fn);
  using Handler = void (Server::*)(const httplib::Request&, httplib::Response&);
  void guarded(const httplib::Request& req, httplib::Response& res, bool needs_key, const std::function<void()>& fn);
  void check_api_key(const httplib::Request& req, const Profile& p) const;
  std::shared_ptr<const Profile> ready_profile() const;  // 503 while loading
  void prepare_image(Job& job, const std::string& image_url, const Profile& p, RequestInfo& info);
  std::shared_ptr<const JobOutcome> cached_response(Job& job, const Profile& p);
  void submit(const std::shared_ptr<Job>& job);
  void apply_runtime_settings(const Profile& p);
  std::string health_json() const;
  std::string config_json() const;

  ServerOptions opts_;
  ServerConfig startup_cfg_;
  std::unique_ptr<HttpServer> api_, backend_;
  std::thread api_thread_, backend_thread_;

  mutable std::mutex active_m_;
  std::shared_ptr<const Profile> active_;
  std::mutex switch_m_;

  Caches caches_;
  std::unique_ptr<InferenceQueue> queue_;
  Metrics metrics_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<bool> stopping_{false};

  std::mutex info_m_;
  std::unordered_map<const httplib::Request*, std::shared_ptr<RequestInfo>> infos_;
  std::shared_ptr<RequestInfo> info(const httplib::Request& req);
};

}  // namespace md::server
