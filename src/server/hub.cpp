// Hugging Face hub download into the hub's cache layout (see hub.h).
#include "server/hub.h"

#include "model/config.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "tensor/error.h"

namespace md {
namespace fs = std::filesystem;

namespace {

constexpr int kMaxFailuresWithoutProgress = 5;
constexpr int kMaxAttempts = 100;
constexpr int kMaxRedirects = 10;

// ---------------------------------------------------------------- environment

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool is_true(std::string v) {
  for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

std::string home_dir() {
  std::string h = env("HOME");
  if (!h.empty()) return h;
  if (const passwd* pw = getpwuid(getuid()); pw && pw->pw_dir) return pw->pw_dir;
  return "/";
}

std::string expand_user(const std::string& p) {
  if (p == "~") return home_dir();
  if (p.rfind("~/", 0) == 0) return home_dir() + p.substr(1);
  return p;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string hf_home() {
  std::string h = env("HF_HOME");
  if (!h.empty()) return expand_user(h);
  std::string xdg = env("XDG_CACHE_HOME");
  if (!xdg.empty()) return expand_user(xdg) + "/huggingface";
  return home_dir() + "/.cache/huggingface";
}

std::string default_token() {
  if (const char* t = std::getenv("HF_TOKEN")) return trim(t);
  if (const char* t = std::getenv("HUGGING_FACE_HUB_TOKEN")) return trim(t);
  std::string path = env("HF_TOKEN_PATH");
  path = path.empty() ? hf_home() + "/token" : expand_user(path);
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return trim(ss.str());
}

struct Resolved {
  std::string endpoint;
  std::string cache;
  std::string token;
  bool offline = false;
  bool progress = false;  // progress bar (stderr is a TTY)
  bool announce = false;  // one line per downloaded file (stderr is not a TTY)
  std::vector<std::string> files;
  std::vector<std::string> optional_files;
  long timeout_s = 30;
};

Resolved resolve_options(const HubOptions& o) {
  Resolved r;
  r.endpoint = !o.endpoint.empty() ? o.endpoint : env("HF_ENDPOINT");
  if (r.endpoint.empty()) r.endpoint = "https://huggingface.co";
  while (r.endpoint.size() > 1 && r.endpoint.back() == '/') r.endpoint.pop_back();
  r.cache = hub_cache_dir(o);
  r.token = !o.token.empty() ? o.token : default_token();
  const char* off = std::getenv("HF_HUB_OFFLINE");
  if (!off) off = std::getenv("TRANSFORMERS_OFFLINE");
  r.offline = o.offline || (off && is_true(off));
  const bool want = o.progress && !is_true(env("HF_HUB_DISABLE_PROGRESS_BARS"));
  r.progress = want && isatty(STDERR_FILENO);
  r.announce = want && !r.progress;
  r.files = o.files;
  r.optional_files = o.optional_files;
  r.timeout_s = o.timeout_s > 0 ? o.timeout_s : 30;
  return r;
}

// -------------------------------------------------------------------- strings

bool is_hex(const std::string& s, size_t n) {
  return s.size() == n &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}
bool is_commit(const std::string& s) { return is_hex(s, 40); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ETag header value → blob name: drop a weak-validator prefix and quotes.
std::string normalize_etag(std::string e) {
  e = trim(e);
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

bool safe_blob_name(const std::string& e) {
  if (e.empty() || e.size() > 200 || e[0] == '.' || e[0] == '-') return false;
  return std::all_of(e.begin(), e.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

// A path inside the repo: relative, no empty, "." or ".." components.
void check_repo_path(const std::string& name, const std::string& what) {
  bool ok =
      !name.empty() && name[0] != '/' && name.find('\\') == std::string::npos && name.find('\0') == std::string::npos;
  size_t b = 0;
  while (ok && b <= name.size()) {
    size_t e = name.find('/', b);
    if (e == std::string::npos) e = name.size();
    const std::string part = name.substr(b, e - b);
    if (part.empty() || part == "." || part == "..") ok = false;
    b = e + 1;
  }
  if (!ok) throw Error("hub: invalid " + what + " '" + name + "'");
}

std::string url_quote(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

// Unique suffix for temporary files next to their destination (several
// threads or processes may publish the same file at once).
std::string tmp_suffix() {
  static std::atomic<unsigned> counter{0};
  return ".tmp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
}

std::string errno_text(int e) {
  std::string s = std::strerror(e);
  if (e == ENOSPC || e == EFBIG || e == EDQUOT) s += " (disk full?)";
  return s;
}

// --------------------------------------------------------------------- sha256

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_) throw Error("hub: out of memory (sha256)");
    reset();
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void reset() {
    if (EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) throw Error("hub: sha256 unavailable");
  }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_, md, &n);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < n; ++i) {
      out += digits[md[i] >> 4];
      out += digits[md[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// ----------------------------------------------------------------------- curl

void curl_global() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw Error("hub: cannot initialise libcurl");
  });
}

struct Easy {
  CURL* h = nullptr;
  curl_slist* headers = nullptr;
  char errbuf[CURL_ERROR_SIZE] = {0};
  Easy() {
    curl_global();
    h = curl_easy_init();
    if (!h) throw Error("hub: cannot initialise libcurl");
  }
  ~Easy() {
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
  }
  Easy(const Easy&) = delete;
  Easy& operator=(const Easy&) = delete;
  void add_header(const std::string& line) { headers = curl_slist_append(headers, line.c_str()); }
  std::string error(CURLcode rc) const {
    std::string s = errbuf[0] ? std::string(errbuf) : std::string(curl_easy_strerror(rc));
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  }
};

// "scheme://host:port" of a URL (lower case, default ports filled in), for
// deciding whether a URL may receive the token.
std::string origin_of(const std::string& url) {
  CURLU* u = curl_url();
  if (!u) return "";
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK) {
    char *scheme = nullptr, *host = nullptr, *port = nullptr;
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    if (scheme && host) out = lower(scheme) + "://" + lower(host) + ":" + (port ? port : "");
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(u);
  return out;
}

using HeaderMap = std::map<std::string, std::string>;

// Collects the headers of the last response (a new status line starts over,
// e.g. after a proxy's CONNECT answer).
size_t header_cb(char* p, size_t size, size_t n, void* ud) {
  auto* m = static_cast<HeaderMap*>(ud);
  const std::string line(p, size * n);
  if (line.rfind("HTTP/", 0) == 0) {
    m->clear();
  } else if (size_t c = line.find(':'); c != std::string::npos) {
    (*m)[lower(trim(line.substr(0, c)))] = trim(line.substr(c + 1));
  }
  return size * n;
}

bool transient(CURLcode rc) {
  switch (rc) {
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return true;
    default: return false;
  }
}

long long parse_ll(const std::string& s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), ::isdigit)) return -1;
  try {
    return std::stoll(s);
  } catch (...) {
    return -1;
  }
}

void sleep_backoff(int failures) {
  const double s = std::min(0.25 * (1 << std::min(failures - 1, 4)), 2.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(s * 1000)));
}

// ------------------------------------------------------------------- progress

class Progress {
 public:
  Progress(bool tty, std::string label, long long total, long long start)
      : tty_(tty),
        label_(std::move(label)),
        total_(total),
        start_(start),
        done_(start),
        t0_(std::chrono::steady_clock::now()) {
    if (label_.size() > 40) label_ = "…" + label_.substr(label_.size() - 39);
  }
  ~Progress() {
    if (drawn_) std::fputs("\n", stderr);
  }
  void restart_at(long long pos) {
    start_ = done_ = pos;
    t0_ = std::chrono::steady_clock::now();
  }
  void add(long long n) {
    done_ += n;
    draw(false);
  }
  void finish() { draw(true); }

 private:
  void draw(bool force) {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && drawn_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    drawn_ = true;
    const double secs = std::chrono::duration<double>(now - t0_).count();
    const double speed = secs > 0 ? static_cast<double>(done_ - start_) / secs : 0;
    std::string line = "\r\033[K" + label_ + "  ";
    char pct[16] = "";
    if (total_ > 0) {
      std::snprintf(pct, sizeof pct, "%3d%%  ", static_cast<int>(100.0 * done_ / total_));
      line += pct + human_bytes(static_cast<double>(done_)) + " / " + human_bytes(static_cast<double>(total_));
    } else {
      line += human_bytes(static_cast<double>(done_));
    }
    line += "  " + human_bytes(speed) + "/s";
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  }

  bool tty_;
  std::string label_;
  long long total_, start_, done_;
  std::chrono::steady_clock::time_point t0_, last_{};
  bool drawn_ = false;
};

// ------------------------------------------------------------------ file system

void make_dirs(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p, ec);
  if (ec) throw Error("hub: cannot create directory " + p.string() + ": " + ec.message());
}

void write_file_atomic(const fs::path& p, const std::string& content) {
  make_dirs(p.parent_path());
  const std::string tmp = p.string() + tmp_suffix();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw Error("hub: cannot write " + p.string() + ": " + errno_text(errno));
  const ssize_t w = ::write(fd, content.data(), content.size());
  const int e = errno;
  if (::close(fd) != 0 || w != static_cast<ssize_t>(content.size())) {
    ::unlink(tmp.c_str());
    throw Error("hub: cannot write " + p.string() + ": " + errno_text(w < 0 ? e : ENOSPC));
  }
  if (::rename(tmp.c_str(), p.c_str()) != 0) {
    const int e2 = errno;
    ::unlink(tmp.c_str());
    throw Error("hub: cannot write " + p.string() + ": " + errno_text(e2));
  }
}

std::optional<std::string> read_small_file(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Exclusive flock() on <cache>/.locks/<repo folder>/<etag>.lock, compatible
// with the Python tools' file locks.
class FileLock {
 public:
  explicit FileLock(const fs::path& p) {
    make_dirs(p.parent_path());
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd_ < 0) throw Error("hub: cannot create lock file " + p.string() + ": " + errno_text(errno));
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) {
        const int e = errno;
        ::close(fd_);
        throw Error("hub: cannot lock " + p.string() + ": " + errno_text(e));
      }
    }
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

// Files of `files` present in `snap`; a "*.safetensors" entry is also
// satisfied by its index and all its shards. Returns what is missing.
std::vector<std::string> missing_files(const fs::path& snap, const std::vector<std::string>& files) {
  std::vector<std::string> missing;
  std::error_code ec;
  for (const std::string& f : files) {
    if (fs::exists(snap / f, ec)) continue;  // follows the symlink: the blob must exist
    bool ok = false;
    if (ends_with(f, ".safetensors") && fs::exists(snap / (f + ".index.json"), ec)) {
      try {
        std::ifstream in(snap / (f + ".index.json"));
        const auto j = nlohmann::json::parse(in);
        ok = j.contains("weight_map") && j["weight_map"].is_object();
        if (ok) {
          for (const auto& [k, v] : j["weight_map"].items()) {
            if (!v.is_string() || !fs::exists(snap / v.get<std::string>(), ec)) {
              ok = false;
              break;
            }
          }
        }
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (!ok) missing.push_back(f);
  }
  return missing;
}

// ------------------------------------------------------------------ the hub

struct FileMeta {
  long status = 0;
  std::string requested_url;  // the resolve URL asked first
  std::string url;            // the hub URL that answered (after relative redirects)
  std::string location;       // absolute redirect target (CDN), if any
  std::string commit, etag, linked_etag, error_code, error_message;
  long long linked_size = -1, content_length = -1;
};

class Hub {
 public:
  Hub(const Resolved& r, std::string repo, std::string revision, fs::path storage)
      : r_(r),
        repo_(std::move(repo)),
        revision_(std::move(revision)),
        storage_(std::move(storage)),
        endpoint_origin_(origin_of(r.endpoint)) {
    if (is_commit(revision_)) commit_ = revision_;
    url_revision_ = revision_;
  }

  std::string download() {
    for (const std::string& f : r_.files) {
      check_repo_path(f, "file name");
      if (ends_with(f, ".safetensors")) {
        const std::string index = f + ".index.json";
        std::error_code ec;
        if (!commit_.empty()) {
          const fs::path snap = storage_ / "snapshots" / commit_;
          if (fs::exists(snap / index, ec)) {
            for (const std::string& shard : shards_of(snap / index)) fetch(shard, std::nullopt);
            continue;
          }
          if (fs::exists(snap / f, ec)) continue;
        }
        FileMeta m = head(index);
        if (m.status == 404 && m.error_code != "RepoNotFound" && m.error_code != "RevisionNotFound") {
          mark_missing(index, m);
          fetch(f, std::nullopt);
        } else {
          const fs::path idx = fetch(index, m);
          for (const std::string& shard : shards_of(idx)) fetch(shard, std::nullopt);
        }
      } else {
        fetch(f, std::nullopt);
      }
    }
    for (const std::string& f : r_.optional_files) {
      check_repo_path(f, "file name");
      std::error_code ec;
      if (!commit_.empty() && (fs::exists(storage_ / "snapshots" / commit_ / f, ec) ||
                               fs::exists(storage_ / ".no_exist" / commit_ / f, ec)))
        continue;
      FileMeta m = head(f);
      if (m.status == 404 && m.error_code != "RepoNotFound" && m.error_code != "RevisionNotFound") {
        mark_missing(f, m);
        continue;
      }
      fetch(f, m);
    }
    if (commit_.empty()) throw Error("hub: no files requested for " + repo_);
    if (revision_ != commit_) {
      const fs::path ref = storage_ / "refs" / revision_;
      if (read_small_file(ref).value_or("") != commit_) write_file_atomic(ref, commit_);
    }
    return (storage_ / "snapshots" / commit_).string();
  }

 private:
  std::string resolve_url(const std::string& file) const {
    return r_.endpoint + "/" + repo_ + "/resolve/" + url_quote(url_revision_, false) + "/" + url_quote(file, true);
  }

  void setup(Easy& e, const std::string& url) const {
    curl_easy_setopt(e.h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e.h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e.h, CURLOPT_ERRORBUFFER, e.errbuf);
    curl_easy_setopt(e.h, CURLOPT_CONNECTTIMEOUT, r_.timeout_s);
    curl_easy_setopt(e.h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e.h, CURLOPT_LOW_SPEED_TIME, r_.timeout_s);
    curl_easy_setopt(e.h, CURLOPT_USERAGENT, "moondream-cpp/1.0 (hub download; libcurl)");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e.h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e.h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#endif
    e.add_header("Accept-Encoding: identity");
    // The token goes to the hub only, never to a CDN on another host.
    if (!r_.token.empty() && origin_of(url) == endpoint_origin_) {
      e.add_header("Authorization: Bearer " + r_.token);
    }
    curl_easy_setopt(e.h, CURLOPT_HTTPHEADER, e.headers);
  }

  [[noreturn]] void network_error(const std::string& url, const std::string& why) const {
    throw Error("hub: cannot download " + url + ": " + why +
                " (check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only)");
  }

  // HEAD of a resolve URL; relative redirects (renamed repos, small-file
  // caches) are followed, an absolute one (CDN) is returned as `location`.
  FileMeta head(const std::string& file) {
    FileMeta m;
    std::string url = resolve_url(file);
    m.requested_url = url;
    for (int hop = 0; hop <= kMaxRedirects; ++hop) {
      HeaderMap h;
      long status = 0;
      std::string target;
      for (int attempt = 1;; ++attempt) {
        Easy e;
        setup(e, url);
        h.clear();
        curl_easy_setopt(e.h, CURLOPT_NOBODY, 1L);
        curl_easy_setopt(e.h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e.h, CURLOPT_TIMEOUT, r_.timeout_s);
        curl_easy_setopt(e.h, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e.h, CURLOPT_HEADERDATA, &h);
        const CURLcode rc = curl_easy_perform(e.h);
        if (rc == CURLE_OK) {
          curl_easy_getinfo(e.h, CURLINFO_RESPONSE_CODE, &status);
          char* redirect = nullptr;
          curl_easy_getinfo(e.h, CURLINFO_REDIRECT_URL, &redirect);
          if (redirect) target = redirect;
          break;
        }
        if (!transient(rc) || rc == CURLE_COULDNT_CONNECT || attempt >= 3) network_error(url, e.error(rc));
        sleep_backoff(attempt);
      }
      auto get = [&](const char* k) {
        auto it = h.find(k);
        return it == h.end() ? std::string() : it->second;
      };
      // Later responses of the redirect chain override earlier ones.
      const std::pair<const char*, std::string*> fields[] = {{"x-repo-commit", &m.commit},
                                                             {"etag", &m.etag},
                                                             {"x-linked-etag", &m.linked_etag},
                                                             {"x-error-code", &m.error_code},
                                                             {"x-error-message", &m.error_message}};
      for (const auto& [key, dst] : fields) {
        if (std::string v = get(key); !v.empty()) *dst = v;
      }
      if (long long s = parse_ll(get("x-linked-size")); s >= 0) m.linked_size = s;
      m.status = status;
      m.url = url;
      if (status >= 300 && status < 400) {
        const std::string loc = get("location");
        if (loc.empty() || target.empty()) throw Error("hub: redirect without Location from " + url);
        const bool relative = loc.find("://") == std::string::npos && loc.rfind("//", 0) != 0;
        if (relative) {
          url = target;
          continue;
        }
        m.location = target;
        return m;
      }
      if (status >= 200 && status < 300) m.content_length = parse_ll(get("content-length"));
      return m;
    }
    throw Error("hub: too many redirects for " + resolve_url(file));
  }

  void check_status(const FileMeta& m, const std::string& file) const {
    const long s = m.status;
    if (s >= 200 && s < 400) return;
    const std::string repo_rev = repo_ + "@" + revision_;
    const std::string server = m.error_message.empty() ? "" : " (" + m.error_message + ")";
    if (s == 401 || s == 403) {
      const std::string token_hint = r_.token.empty() ? "it is private or gated: set HF_TOKEN to an access token"
                                                      : "the token (HF_TOKEN) is invalid or has no access to it";
      if (m.error_code == "RepoNotFound") {
        throw Error("hub: repository " + repo_ + " not found on " + r_.endpoint + ", or " + token_hint + " (HTTP " +
                    std::to_string(s) + ")");
      }
      throw Error("hub: access to " + repo_ + " denied (HTTP " + std::to_string(s) + "): " + token_hint + server);
    }
    if (s == 404) {
      if (m.error_code == "RepoNotFound") {
        throw Error("hub: repository " + repo_ + " not found on " + r_.endpoint +
                    " (and there is no local directory of that name)");
      }
      if (m.error_code == "RevisionNotFound") {
        throw Error("hub: revision '" + revision_ + "' not found in repository " + repo_);
      }
      if (m.error_code == "EntryNotFound") {
        throw Error("hub: file " + file + " not found in " + repo_rev);
      }
      throw Error("hub: " + repo_rev + "/" + file + " not found (HTTP 404): check the repo id and the revision" +
                  server);
    }
    throw Error("hub: HTTP " + std::to_string(s) + " for " + m.url + server);
  }

  // Records the commit the hub answered with; later files are requested at
  // that commit so that all of them come from the same one.
  void note_commit(const FileMeta& m, const std::string& file) {
    if (m.commit.empty()) {
      throw Error("hub: the answer for " + m.url + " has no X-Repo-Commit header (is HF_ENDPOINT a hub?)");
    }
    if (!is_commit(m.commit)) throw Error("hub: invalid X-Repo-Commit '" + m.commit + "' for " + file);
    if (commit_.empty()) {
      commit_ = m.commit;
      url_revision_ = commit_;
    } else if (m.commit != commit_) {
      throw Error("hub: " + repo_ + " changed while downloading (commit " + m.commit + " for " + file + ", " + commit_ +
                  " before); run again");
    }
  }

  // A file the repo does not have: Python's cache marks it in .no_exist/.
  void mark_missing(const std::string& file, const FileMeta& m) {
    if (!is_commit(m.commit) || (!commit_.empty() && m.commit != commit_)) return;
    note_commit(m, file);
    try {
      const fs::path p = storage_ / ".no_exist" / commit_ / file;
      make_dirs(p.parent_path());
      std::ofstream(p.string(), std::ios::app);
    } catch (const Error&) {
      // Only an optimisation for later lookups.
    }
  }

  std::vector<std::string> shards_of(const fs::path& index) const {
    nlohmann::json j;
    try {
      std::ifstream in(index);
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw Error("hub: " + index.string() + ": invalid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw Error("hub: " + index.string() + ": no weight_map object");
    }
    std::set<std::string> shards;
    for (const auto& [k, v] : j["weight_map"].items()) {
      if (!v.is_string()) throw Error("hub: " + index.string() + ": weight_map value of " + k + " is not a string");
      const std::string s = v.get<std::string>();
      check_repo_path(s, "shard name in " + index.string());
      shards.insert(s);
    }
    return {shards.begin(), shards.end()};
  }

  // Makes snapshots/<commit>/<file> point at the file's blob, downloading the
  // blob when needed. Returns the snapshot path of the file.
  fs::path fetch(const std::string& file, std::optional<FileMeta> pre) {
    check_repo_path(file, "file name");
    std::error_code ec;
    if (!commit_.empty()) {
      const fs::path ptr = storage_ / "snapshots" / commit_ / file;
      if (fs::exists(ptr, ec)) return ptr;  // already in this snapshot
    }
    const FileMeta m = pre ? *pre : head(file);
    check_status(m, file);
    note_commit(m, file);
    const std::string etag = normalize_etag(m.linked_etag.empty() ? m.etag : m.linked_etag);
    if (etag.empty()) throw Error("hub: the answer for " + m.url + " has no ETag");
    if (!safe_blob_name(etag)) throw Error("hub: unusable ETag '" + etag + "' for " + file);
    const long long size = m.linked_size >= 0 ? m.linked_size : m.content_length;

    const fs::path blob = storage_ / "blobs" / etag;
    const fs::path ptr = storage_ / "snapshots" / commit_ / file;
    auto blob_ok = [&] {
      struct stat st;
      return ::stat(blob.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
             (size < 0 || st.st_size == static_cast<off_t>(size));
    };
    if (!blob_ok()) {
      make_dirs(storage_ / "blobs");
      FileLock lock(storage_.parent_path() / ".locks" / storage_.filename() / (etag + ".lock"));
      // Small files come from the hub itself: ask at the commit (not at a
      // branch that might move meanwhile) unless a redirect chose the URL.
      std::string url = m.location;
      if (url.empty()) url = m.url == m.requested_url ? resolve_url(file) : m.url;
      if (!blob_ok()) download_blob(url, file, etag, size, blob);
    }
    link(ptr, file, etag);
    return ptr;
  }

  void link(const fs::path& ptr, const std::string& file, const std::string& etag) {
    make_dirs(ptr.parent_path());
    std::string target;
    for (size_t i = 0; i < 2 + static_cast<size_t>(std::count(file.begin(), file.end(), '/')); ++i) {
      target += "../";
    }
    target += "blobs/" + etag;
    const std::string tmp = ptr.string() + tmp_suffix();
    ::unlink(tmp.c_str());
    if (::symlink(target.c_str(), tmp.c_str()) != 0 || ::rename(tmp.c_str(), ptr.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      throw Error("hub: cannot create " + ptr.string() + ": " + errno_text(e));
    }
  }

  struct Xfer {
    CURL* h = nullptr;
    int fd = -1;
    Sha256* sha = nullptr;
    long long* hashed = nullptr;
    long long off = 0;    // bytes in the .incomplete file
    long long asked = 0;  // Range start of this attempt (0: none)
    bool started = false, http_error = false, bad_range = false;
    long status = 0;
    int write_errno = 0;
    std::string error_body;
    HeaderMap headers;
    Progress* progress = nullptr;
  };

  static size_t write_cb(char* p, size_t size, size_t n, void* ud) {
    auto* x = static_cast<Xfer*>(ud);
    const size_t len = size * n;
    if (!x->started) {
      x->started = true;
      curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &x->status);
      if (x->status >= 400) {
        x->http_error = true;
      } else if (x->status == 206) {
        // Content-Range: bytes START-END/TOTAL must start where we are.
        const std::string cr = x->headers.count("content-range") ? x->headers["content-range"] : "";
        long long start = -1;
        if (cr.rfind("bytes ", 0) == 0) start = parse_ll(cr.substr(6, cr.find('-') - 6));
        if (x->asked == 0 || start != x->asked) {
          x->bad_range = true;
          return 0;
        }
      } else if (x->asked > 0) {
        // The server ignored the Range: start over.
        if (::ftruncate(x->fd, 0) != 0) {
          x->write_errno = errno;
          return 0;
        }
        x->off = 0;
        x->sha->reset();
        *x->hashed = 0;
        if (x->progress) x->progress->restart_at(0);
      }
    }
    if (x->http_error) {
      if (x->error_body.size() < 4096) x->error_body.append(p, std::min(len, 4096 - x->error_body.size()));
      return len;
    }
    size_t done = 0;
    while (done < len) {
      const ssize_t w = ::write(x->fd, p + done, len - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        x->write_errno = errno;
        break;
      }
      done += static_cast<size_t>(w);
    }
    // Only what reached the file counts: the .incomplete stays a valid prefix.
    x->sha->update(p, done);
    *x->hashed += static_cast<long long>(done);
    x->off += static_cast<long long>(done);
    if (x->progress) x->progress->add(static_cast<long long>(done));
    return done == len ? len : 0;
  }

  // Brings the hash state up to the first `off` bytes of the file.
  static void catch_up_hash(int fd, long long off, Sha256& sha, long long& hashed, const fs::path& path) {
    if (hashed > off) {
      sha.reset();
      hashed = 0;
    }
    std::vector<char> buf(1 << 20);
    while (hashed < off) {
      const size_t want = static_cast<size_t>(std::min<long long>(off - hashed, static_cast<long long>(buf.size())));
      const ssize_t r = ::pread(fd, buf.data(), want, hashed);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) throw Error("hub: cannot read " + path.string() + ": " + errno_text(r < 0 ? errno : EIO));
      sha.update(buf.data(), static_cast<size_t>(r));
      hashed += r;
    }
  }

  void download_blob(const std::string& url, const std::string& file, const std::string& etag, long long size,
                     const fs::path& blob) {
    const fs::path part = blob.string() + ".incomplete";
    const int fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (fd < 0) throw Error("hub: cannot write " + part.string() + ": " + errno_text(errno));
    struct FdGuard {
      int fd;
      ~FdGuard() {
        if (fd >= 0) ::close(fd);
      }
    } guard{fd};
    auto file_size = [&] {
      struct stat st;
      if (::fstat(fd, &st) != 0) throw Error("hub: cannot stat " + part.string() + ": " + errno_text(errno));
      return static_cast<long long>(st.st_size);
    };
    auto truncate_all = [&] {
      if (::ftruncate(fd, 0) != 0) throw Error("hub: cannot write " + part.string() + ": " + errno_text(errno));
    };
    const bool check_sha = is_hex(etag, 64);
    Sha256 sha;
    long long hashed = 0;

    const std::string label = repo_ + "/" + file;
    const bool big = size < 0 || size >= (1 << 20);  // small files get neither bar nor line
    Progress progress(r_.progress && big, label, size, 0);
    bool announced = false;

    int failures = 0;
    for (int attempt = 1;; ++attempt) {
      long long off = file_size();
      if (size >= 0 && off > size) {
        truncate_all();
        off = 0;
      }
      if (size >= 0 && off == size) break;  // complete from an earlier run: verify below
      if (check_sha) catch_up_hash(fd, off, sha, hashed, part);
      if (!announced) {
        announced = true;
        progress.restart_at(off);
        if (r_.announce && big) {
          std::fprintf(stderr, "hub: downloading %s%s%s\n", label.c_str(),
                       size >= 0 ? (" (" + human_bytes(static_cast<double>(size)) + ")").c_str() : "",
                       off > 0 ? (", resuming at " + human_bytes(static_cast<double>(off))).c_str() : "");
        }
      }

      Easy e;
      setup(e, url);
      Xfer x;
      x.h = e.h;
      x.fd = fd;
      x.sha = &sha;
      x.hashed = &hashed;
      x.off = off;
      x.asked = off;
      x.progress = &progress;
      if (off > 0) curl_easy_setopt(e.h, CURLOPT_RANGE, (std::to_string(off) + "-").c_str());
      curl_easy_setopt(e.h, CURLOPT_FOLLOWLOCATION, 1L);
      curl_easy_setopt(e.h, CURLOPT_MAXREDIRS, static_cast<long>(kMaxRedirects));
      curl_easy_setopt(e.h, CURLOPT_HEADERFUNCTION, header_cb);
      curl_easy_setopt(e.h, CURLOPT_HEADERDATA, &x.headers);
      curl_easy_setopt(e.h, CURLOPT_WRITEFUNCTION, write_cb);
      curl_easy_setopt(e.h, CURLOPT_WRITEDATA, &x);
      const CURLcode rc = curl_easy_perform(e.h);

      if (x.write_errno) {
        throw Error("hub: cannot write " + part.string() + ": " + errno_text(x.write_errno) + "; " +
                    std::to_string(x.off) + " bytes of " + file +
                    " are kept there and the download resumes on the next start");
      }
      if (x.bad_range) {
        // The server answered with a different range than asked: start over.
        truncate_all();
        if (++failures >= kMaxFailuresWithoutProgress) throw Error("hub: " + url + " answers with wrong ranges");
        continue;
      }
      if (rc == CURLE_OK || x.http_error) {
        long status = x.status;
        if (!x.started) curl_easy_getinfo(e.h, CURLINFO_RESPONSE_CODE, &status);
        if (status == 416 && off > 0) {
          truncate_all();  // the partial file is not a prefix the server knows
          if (++failures >= kMaxFailuresWithoutProgress) throw Error("hub: " + url + " refuses to resume");
          continue;
        }
        if (status >= 400) {
          FileMeta fm;
          fm.status = status;
          fm.url = url;
          fm.error_code = x.headers.count("x-error-code") ? x.headers["x-error-code"] : "";
          fm.error_message = x.headers.count("x-error-message") ? x.headers["x-error-message"] : "";
          check_status(fm, file);
        }
        const long long now = file_size();
        if (size < 0 || now == size) break;
        if (now > size) {
          ::unlink(part.c_str());
          throw Error("hub: size mismatch for " + file + ": received " + std::to_string(now) +
                      " bytes, the hub announced " + std::to_string(size) + " (the download was removed; run again)");
        }
        // Short body without a transport error: treat like a dropped connection.
      } else if (!transient(rc)) {
        network_error(url, e.error(rc));
      }
      if (x.off > off) failures = 0;
      if (++failures >= kMaxFailuresWithoutProgress || attempt >= kMaxAttempts) {
        network_error(url, (rc == CURLE_OK ? std::string("connection closed early") : e.error(rc)) + " (" +
                               std::to_string(failures) + " attempts; " + std::to_string(x.off) +
                               " bytes are kept in " + part.string() + " for the next start)");
      }
      sleep_backoff(failures);
    }

    const long long final_size = file_size();
    if (size >= 0 && final_size != size) {
      ::unlink(part.c_str());
      throw Error("hub: size mismatch for " + file + ": " + std::to_string(final_size) + " bytes, expected " +
                  std::to_string(size));
    }
    if (check_sha) {
      catch_up_hash(fd, final_size, sha, hashed, part);
      const std::string got = sha.hex();
      if (got != etag) {
        ::unlink(part.c_str());
        throw Error("hub: sha256 mismatch for " + file + ": got " + got + ", expected " + etag +
                    " (the corrupt download was removed; run again)");
      }
    }
    if (::fdatasync(fd) != 0) throw Error("hub: cannot write " + part.string() + ": " + errno_text(errno));
    guard.fd = -1;
    if (::close(fd) != 0) throw Error("hub: cannot write " + part.string() + ": " + errno_text(errno));
    if (::rename(part.c_str(), blob.c_str()) != 0) {
      throw Error("hub: cannot rename " + part.string() + " to " + blob.string() + ": " + errno_text(errno));
    }
    progress.finish();
  }

  const Resolved& r_;
  std::string repo_, revision_;
  fs::path storage_;
  std::string endpoint_origin_;
  std::string commit_, url_revision_;
};

}  // namespace

bool is_hub_repo_id(const std::string& s) {
  auto part_ok = [](const std::string& p) {
    if (p.empty() || p.size() > 96 || p[0] == '.' || p[0] == '-' || p.find("..") != std::string::npos) return false;
    return std::all_of(p.begin(), p.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
  };
  const size_t slash = s.find('/');
  if (slash == std::string::npos) return part_ok(s);
  return part_ok(s.substr(0, slash)) && part_ok(s.substr(slash + 1));
}

std::string hub_cache_dir(const HubOptions& o) {
  if (!o.cache_dir.empty()) return expand_user(o.cache_dir);
  for (const char* v : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    if (std::string c = env(v); !c.empty()) return expand_user(c);
  }
  return hf_home() + "/hub";
}

std::string resolve_model(const std::string& model_path_or_repo, const std::string& revision, const HubOptions& opts) {
  if (model_path_or_repo.empty()) throw Error("model: no model directory or hub repo id given");
  const std::string path = expand_user(model_path_or_repo);
  std::error_code ec;
  if (fs::is_directory(path, ec)) return path;
  if (fs::exists(path, ec)) {
    throw Error("model: " + path +
                " is not a directory (give a model directory or a hub repo id such as vikhyatk/moondream2)");
  }
  if (!is_hub_repo_id(model_path_or_repo)) {
    throw Error("model: directory " + path +
                " does not exist (and it is not a hub repo id such as vikhyatk/moondream2)");
  }
  const std::string& repo = model_path_or_repo;
  const std::string rev = revision.empty() ? "main" : revision;
  check_repo_path(rev, "revision");

  const Resolved r = resolve_options(opts);
  std::string folder = "models--" + repo;
  for (size_t p; (p = folder.find('/')) != std::string::npos;) folder.replace(p, 1, "--");
  const fs::path storage = fs::path(r.cache) / folder;

  // The cache first: a complete snapshot needs no network at all.
  std::string commit = is_commit(rev) ? rev : "";
  if (commit.empty()) {
    if (auto ref = read_small_file(storage / "refs" / rev)) commit = trim(*ref);
  }
  std::vector<std::string> missing = r.files;
  if (is_commit(commit)) {
    const fs::path snap = storage / "snapshots" / commit;
    missing = missing_files(snap, r.files);
    // Complete when every optional file is there or known not to exist
    // (offline, what is there is enough).
    bool optional_known = true;
    std::error_code ec;
    for (const std::string& f : r.optional_files)
      optional_known =
          optional_known && (fs::exists(snap / f, ec) || fs::exists(storage / ".no_exist" / commit / f, ec));
    if (missing.empty() && (optional_known || r.offline)) return snap.string();
  }
  if (r.offline) {
    std::string what;
    if (!is_commit(commit)) {
      what = "no refs/" + rev;
    } else {
      what = "snapshot " + commit + " lacks";
      for (const auto& m : missing) what += " " + m;
    }
    throw Error("hub: offline mode (HF_HUB_OFFLINE): " + repo + "@" + rev + " is not in the cache " + storage.string() +
                " (" + what + "); run once with network access");
  }
  Hub hub(r, repo, rev, storage);
  const std::string snap = hub.download();
  missing = missing_files(snap, r.files);
  if (!missing.empty()) throw Error("hub: " + snap + " lacks " + missing.front() + " after the download");
  return snap;
}

std::string resolve_tokenizer(const std::string& path_or_repo, const HubOptions& opts) {
  if (path_or_repo.empty()) throw Error("tokenizer: no tokenizer.json path or hub repo id given");
  const std::string path = expand_user(path_or_repo);
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path;
  if (fs::is_directory(path, ec)) {
    const fs::path f = fs::path(path) / "tokenizer.json";
    if (fs::is_regular_file(f, ec)) return f.string();
    throw Error("tokenizer: " + path + " holds no tokenizer.json");
  }
  if (!is_hub_repo_id(path_or_repo))
    throw Error("tokenizer: " + path + " does not exist (and it is not a hub repo id such as moondream/starmie-v1)");
  HubOptions o = opts;
  o.files = {"tokenizer.json"};
  o.optional_files.clear();
  try {
    return (fs::path(resolve_model(path_or_repo, "main", o)) / "tokenizer.json").string();
  } catch (const Error& e) {
    throw Error("tokenizer: " + path_or_repo + " is not a local file or directory, and from the hub: " + e.what());
  }
}

std::string tokenizer_for_model(const std::string& model_dir, const std::string& spec,
                                const std::string& revision_profile, const HubOptions& opts) {
  if (!spec.empty()) return resolve_tokenizer(spec, opts);
  RevisionChoice choice;
  if (!parse_revision_choice(revision_profile, &choice))
    throw Error("revision_profile must be auto, 2025-01-09 or 2025-06-21, got '" + revision_profile + "'");
  const RevisionProfile rev = load_model_config(model_dir, choice).revision;
  if (rev.tokenizer_repo.empty()) return "";
  try {
    return resolve_tokenizer(rev.tokenizer_repo, opts);
  } catch (const Error& e) {
    throw Error("model " + model_dir + " is revision " + rev.name + " (" + rev.detected_by + ") and needs the " +
                rev.tokenizer_repo + " tokenizer (give --tokenizer PATH|REPO, config key \"tokenizer\"): " + e.what());
  }
}

namespace hub_detail {
std::string sha256_hex(std::string_view data) {
  Sha256 s;
  s.update(data.data(), data.size());
  return s.hex();
}
}  // namespace hub_detail

}  // namespace md
