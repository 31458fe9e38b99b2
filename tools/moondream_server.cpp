// moondream-server: Moondream2 on the CPU behind an OpenAI-compatible and
// Moondream-compatible HTTP API (port 8080) with a backend API (port 8000).
//   moondream-server [--config FILE] [--model DIR|REPO] [--revision REV]
//                    [--host H] [--port 8080] [--backend-port 8000]
//                    [--threads N] [--api-key KEY] [--no-web-ui] [--replace]
// See docs/API.md.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "server/config.h"
#include "server/process.h"
#include "server/server.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using namespace md::server;

namespace {

// Signals: a handler (not a blocked mask: threads started before main, such
// as OpenBLAS's, would otherwise take SIGTERM's default action) that exits at
// once before the server serves, and afterwards wakes the shutdown thread.
int g_signal_pipe[2] = {-1, -1};
std::atomic<bool> g_serving{false};

void on_signal(int sig) {
  if (!g_serving.load()) _exit(128 + sig);
  const char c = char(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &c, 1);
}

void install_signal_handlers() {
#if defined(__linux__)
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) std::perror("pipe2");
#else
  if (pipe(g_signal_pipe) != 0) std::perror("pipe");
  for (const int fd : g_signal_pipe) fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that goes away must not kill us
}

int wait_signal() {
  char c = 0;
  while (read(g_signal_pipe[0], &c, 1) < 0 && errno == EINTR) {
  }
  return c;
}

void setup_logging() {
  auto logger = spdlog::stderr_color_mt("moondream-server");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::info);
  if (const char* lv = std::getenv("LOG_LEVEL"); lv && *lv) {
    std::string s = lv;
    for (char& c : s) c = char(std::tolower((unsigned char)c));
    if (s == "warning") s = "warn";
    if (s == "fatal") s = "critical";
    const auto level = spdlog::level::from_str(s);
    if (level == spdlog::level::off && s != "off")
      spdlog::warn("LOG_LEVEL '{}' is not one of trace, debug, info, warn, error; using info", lv);
    else
      spdlog::set_level(level);
  }
  spdlog::flush_on(spdlog::level::trace);
}

[[noreturn]] void die(const std::string& msg, int code) {
  std::fprintf(stderr, "moondream-server: %s\n", msg.c_str());
  std::fflush(stderr);
  std::exit(code);
}

std::string default_configs_dir(const char* argv0) {
  const fs::path src = fs::path(MOONDREAM_SOURCE_DIR) / "configs";
  std::error_code ec;
  if (fs::is_directory(src, ec)) return src.string();
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (const fs::path& d : {exe.parent_path() / "configs", exe.parent_path().parent_path() / "configs",
                            exe.parent_path().parent_path() / "share" / "moondream" / "configs"})
    if (!exe.empty() && fs::is_directory(d, ec)) return d.string();
  (void)argv0;
  return src.string();
}

}  // namespace

int main(int argc, char** argv) {
  install_signal_handlers();

  CLI::App app{"moondream-server: Moondream2 on the CPU behind OpenAI- and Moondream-compatible HTTP APIs"};
  std::string config_path, configs_dir, pid_file;
  std::string model, revision, host, api_key, tokenizer, revision_profile, quantization, kv_cache;
  int port = 0, backend_port = -1, threads = -1;
  bool replace = false, version = false, no_web_ui = false;
  double replace_wait = 120;
  app.add_option("--config", config_path, "Config file (JSON); its stem is the active profile");
  app.add_option("--configs-dir", configs_dir,
                 "Folder of profiles for PATCH /api/v1/config (default: the --config file's folder, else configs/)");
  app.add_option("--model", model, "Model directory or Hugging Face repo id (overrides model_path)");
  app.add_option("--revision", revision, "Hub revision: branch, tag or commit (overrides revision)");
  app.add_option(
      "--tokenizer", tokenizer,
      "tokenizer.json file, its directory or hub repo id (overrides tokenizer; default: what the revision needs)");
  app.add_option(
      "--revision-profile", revision_profile,
      "auto (default), 2025-01-09 or 2025-06-21: how prompts and tokens are built (overrides revision_profile)");
  app.add_option("--quantization", quantization,
                 "Text-model weights: none (as stored), int8 or q4 (overrides performance.quantization)");
  app.add_option("--kv-cache", kv_cache, "KV cache rows: bf16, f32 or int8 (overrides performance.kv_cache)");
  app.add_option("--host", host, "Address to listen on (overrides server.host)");
  app.add_option("--port", port, "API port (overrides server.port, default 8080)")->check(CLI::Range(1, 65535));
  app.add_option("--backend-port", backend_port,
                 "Backend API port, 0 = off (overrides server.backend_port, default 8000)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--threads", threads, "Inference threads, 0 = all cores (overrides threads)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--api-key", api_key, "Require this key (Authorization: Bearer KEY); also $MOONDREAM_API_KEY");
  app.add_option("--pid-file", pid_file, "Pid file (default $XDG_RUNTIME_DIR or /tmp/moondream-server-PORT.pid)");
  std::string fallback_model;
  app.add_option("--fallback-model", fallback_model,
                 "Directory served instead when the configured hub model cannot be fetched at startup");
  app.add_flag("--no-web-ui", no_web_ui, "Do not serve the web page at / (overrides server.web_ui)");
  app.add_flag("--replace", replace, "Stop a previous moondream-server on the port first (gracefully)");
  app.add_option("--replace-wait", replace_wait, "Seconds to wait for the previous server to finish (default 120)");
  app.add_flag("--version", version, "Print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    die(e.what(), 2);
  }
  if (version) {
    std::printf("moondream-server %s\n", kServerVersion);
    return 0;
  }
  setup_logging();

  ConfigOverrides ov;
  if (!model.empty()) ov.model_path = model;
  if (app.count("--revision")) ov.revision = revision;
  if (app.count("--tokenizer")) ov.tokenizer = tokenizer;
  if (app.count("--revision-profile")) ov.revision_profile = revision_profile;
  if (app.count("--quantization")) ov.quantization = quantization;
  if (app.count("--kv-cache")) ov.kv_cache = kv_cache;
  if (!host.empty()) ov.host = host;
  if (api_key.empty()) {
    if (const char* k = std::getenv("MOONDREAM_API_KEY"); k && *k) api_key = k;
  }
  if (!api_key.empty()) ov.api_key = api_key;
  if (port > 0) ov.port = port;
  if (backend_port >= 0) ov.backend_port = backend_port;
  if (threads >= 0) ov.threads = threads;
  if (no_web_ui) ov.web_ui = false;

  if (configs_dir.empty())
    configs_dir =
        config_path.empty() ? default_configs_dir(argv[0]) : fs::absolute(fs::path(config_path)).parent_path().string();
  std::string profile = "default";
  if (config_path.empty()) {
    const fs::path def = fs::path(configs_dir) / "moondream2.json";
    std::error_code ec;
    if (fs::is_regular_file(def, ec)) config_path = def.string();
  }
  ServerConfig cfg;
  std::vector<std::string> warnings;
  try {
    if (!config_path.empty()) {
      cfg = load_server_config(config_path, &warnings);
      profile = fs::path(config_path).stem().string();
    }
    apply_overrides(&cfg, ov);
    validate(cfg, config_path.empty() ? "(defaults)" : config_path);
  } catch (const md::Error& e) {
    die(e.what(), 2);
  }
  for (const auto& w : warnings) spdlog::warn("{}", w);

  // Ports: say who holds them; --replace stops only a previous moondream-server.
  const std::string& h = cfg.server.host;
  if (pid_file.empty()) pid_file = default_pid_file(cfg.server.port);
  if (!port_is_free(h, cfg.server.port)) {
    if (!replace)
      die(describe_port_owner(cfg.server.port, find_port_owner(cfg.server.port)) +
              "; stop it, choose another --port, or pass --replace if it is a moondream-server",
          1);
    spdlog::info("port {} is in use; stopping the previous moondream-server", cfg.server.port);
    const std::string why = replace_previous_server(h, cfg.server.port, pid_file, replace_wait);
    if (!why.empty()) die(why, 1);
    spdlog::info("the previous moondream-server has exited");
  }
  if (cfg.server.backend_port > 0 && !port_is_free(h, cfg.server.backend_port))
    die(describe_port_owner(cfg.server.backend_port, find_port_owner(cfg.server.backend_port)) +
            " (backend port); stop it or choose another --backend-port (0 turns the backend API off)",
        1);

  ServerOptions so;
  so.config_path = config_path;
  so.configs_dir = configs_dir;
  so.overrides = ov;
  so.pid_file = pid_file;
  so.instance = new_instance_id();
  so.fallback_model = fallback_model;
  Server server(so, cfg, profile);
  try {
    server.bind();
  } catch (const md::Error& e) {
    die(e.what(), 1);
  }
  write_pid_file(pid_file, PidFile{getpid(), cfg.server.port, so.instance});
  server.start();
  if (cfg.server.backend_port > 0)
    spdlog::info("moondream-server {} listening on http://{}:{} (API) and http://{}:{} (backend); profile {}",
                 kServerVersion, h, cfg.server.port, h, cfg.server.backend_port, profile);
  else
    spdlog::info("moondream-server {} listening on http://{}:{}; profile {}", kServerVersion, h, cfg.server.port,
                 profile);
  if (cfg.server.web_ui)
    spdlog::info("web page: http://{}:{}/", h == "0.0.0.0" || h == "::" ? "localhost" : h, cfg.server.port);

  std::mutex m;
  std::condition_variable cv;
  bool signalled = false, load_done = false;
  std::string load_error;

  g_serving = true;
  std::thread sig_thread([&] {
    wait_signal();
    {
      std::lock_guard<std::mutex> lock(m);
      signalled = true;
    }
    cv.notify_all();
    const int sig = wait_signal();  // a second signal: stop waiting for in-flight requests
    spdlog::warn("second {}: exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM");
    remove_pid_file(pid_file, so.instance);
    std::_Exit(1);
  });
  sig_thread.detach();

  std::thread loader([&] {
    std::string err;
    try {
      server.load_startup_model();
    } catch (const std::exception& e) {
      err = e.what();
    }
    {
      std::lock_guard<std::mutex> lock(m);
      load_done = true;
      load_error = err;
    }
    cv.notify_all();
  });

  std::unique_lock<std::mutex> lock(m);
  cv.wait(lock, [&] { return signalled || (load_done && !load_error.empty()); });
  const bool failed = !signalled;
  const bool loading = !load_done;
  lock.unlock();
  if (failed) {
    spdlog::error("cannot load the model: {}", load_error);
    server.stop();
    loader.join();
    remove_pid_file(pid_file, so.instance);
    return 1;
  }
  spdlog::info("shutting down: no new connections; finishing requests in flight");
  server.stop();
  remove_pid_file(pid_file, so.instance);
  spdlog::info("stopped");
  if (loading) {
    // Loading cannot be interrupted; nothing else is running.
    std::fflush(nullptr);
    std::_Exit(0);
  }
  loader.join();
  return 0;
}
