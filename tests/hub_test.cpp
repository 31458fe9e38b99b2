// Model download against a mock Hugging Face hub on 127.0.0.1: the resolve
// layout with its headers, a CDN redirect, sha256 ETags, an interrupted
// transfer that resumes with Range, 404/401 errors, a sharded repo, the
// Python-compatible cache layout, offline mode and a write error.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mock_hub.h"
#include "server/hub.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using md::hub_detail::sha256_hex;

namespace {

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}

using namespace md::mockhub;

// --------------------------------------------------------------- fixture

const char* kCommit = "0123456789abcdef0123456789abcdef01234567";
const char* kShardCommit = "fedcba9876543210fedcba9876543210fedcba98";

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/hub_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    for (const char* v :
         {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
          "HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_DISABLE_PROGRESS_BARS"}) {
      ::unsetenv(v);
    }
    ::setenv("HF_HOME", (tmp_ / "hf_home").c_str(), 1);  // no token file from the user's home

    config_ = R"({"model_type": "moondream1", "tiny": true})";
    tokenizer_ = R"({"version": "1.0", "model": {"type": "BPE"}})";
    weights_ = random_bytes(300000, 1);
    MockRepo tiny;
    tiny.commit = kCommit;
    tiny.refs = {"main", "2025-01-09"};
    tiny.files["config.json"] = {config_, false};
    tiny.files["tokenizer.json"] = {tokenizer_, false};
    tiny.files["model.safetensors"] = {weights_, true};
    hub_.repos["test-org/tiny"] = tiny;

    MockRepo priv = tiny;
    priv.token = "secret";
    hub_.repos["test-org/private"] = priv;

    shard1_ = random_bytes(70000, 2);
    shard2_ = random_bytes(50000, 3);
    MockRepo sharded;
    sharded.commit = kShardCommit;
    sharded.refs = {"main"};
    sharded.files["config.json"] = {config_, false};
    sharded.files["tokenizer.json"] = {tokenizer_, false};
    sharded.files["model.safetensors.index.json"] = {
        nlohmann::json{{"metadata", {{"total_size", 120000}}},
                       {"weight_map",
                        {{"text.wte", "model-00001-of-00002.safetensors"},
                         {"text.lm_head", "model-00002-of-00002.safetensors"},
                         {"vision.proj", "model-00001-of-00002.safetensors"}}}}
            .dump(),
        false};
    sharded.files["model-00001-of-00002.safetensors"] = {shard1_, true};
    sharded.files["model-00002-of-00002.safetensors"] = {shard2_, true};
    hub_.repos["test-org/sharded"] = sharded;
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  md::HubOptions opts() const {
    md::HubOptions o;
    o.endpoint = hub_.url();
    o.cache_dir = (tmp_ / "cache").string();
    o.progress = false;
    o.timeout_s = 5;
    return o;
  }
  fs::path storage(const std::string& folder) const { return tmp_ / "cache" / folder; }

  // Every resolve/CDN GET of `sha` that carried a Range header.
  std::vector<std::string> ranges_for(const std::string& sha) {
    std::vector<std::string> out;
    for (const auto& r : hub_.requests()) {
      if (r.method == "GET" && r.path == "/cdn/" + sha && !r.header("range").empty()) out.push_back(r.header("range"));
    }
    return out;
  }
  int gets_of(const std::string& path) {
    int n = 0;
    for (const auto& r : hub_.requests()) n += r.method == "GET" && r.path == path;
    return n;
  }

  fs::path tmp_;
  MockHub hub_;
  std::string config_, tokenizer_, weights_, shard1_, shard2_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const md::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// --------------------------------------------------------------- tests

TEST_F(HubTest, DownloadsIntoThePythonCacheLayoutAndResumesACutTransfer) {
  const std::string sha = sha256_hex(weights_);
  hub_.cut_first[sha] = 100000;

  const std::string dir = md::resolve_model("test-org/tiny", "main", opts());
  const fs::path st = storage("models--test-org--tiny");
  EXPECT_EQ(dir, (st / "snapshots" / kCommit).string());

  // Contents, relative symlinks into blobs named by ETag.
  const std::map<std::string, std::pair<std::string, std::string>> expect = {
      {"config.json", {config_, sha256_hex(config_).substr(24)}},
      {"tokenizer.json", {tokenizer_, sha256_hex(tokenizer_).substr(24)}},
      {"model.safetensors", {weights_, sha}}};
  for (const auto& [name, ce] : expect) {
    const fs::path p = fs::path(dir) / name;
    ASSERT_TRUE(fs::is_symlink(p)) << name;
    EXPECT_EQ(fs::read_symlink(p).string(), "../../blobs/" + ce.second) << name;
    EXPECT_EQ(read_file(p), ce.first) << name;
    EXPECT_TRUE(fs::is_regular_file(st / "blobs" / ce.second)) << name;
  }
  // refs/main holds the commit, without a newline (as huggingface_hub writes it).
  EXPECT_EQ(read_file(st / "refs" / "main"), kCommit);
  // The missing index is recorded like huggingface_hub does.
  EXPECT_TRUE(fs::exists(st / ".no_exist" / kCommit / "model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(st / "blobs")) {
    EXPECT_EQ(e.path().extension(), "") << "left over: " << e.path();
  }

  // The cut transfer was resumed where it stopped, through the CDN redirect.
  EXPECT_EQ(ranges_for(sha), std::vector<std::string>{"bytes=100000-"});
  EXPECT_EQ(gets_of("/cdn/" + sha), 2);
  // The first request names the branch; later ones the commit it resolved to.
  const auto reqs = hub_.requests();
  ASSERT_FALSE(reqs.empty());
  EXPECT_EQ(reqs[0].method, "HEAD");
  EXPECT_EQ(reqs[0].path, "/test-org/tiny/resolve/main/config.json");
  for (size_t i = 1; i < reqs.size(); ++i) {
    if (reqs[i].path.rfind("/cdn/", 0) == 0) continue;
    EXPECT_NE(reqs[i].path.find(std::string("/resolve/") + kCommit + "/"), std::string::npos) << reqs[i].path;
  }
  EXPECT_EQ(reqs[0].header("authorization"), "");  // public repo, no token configured

  // A second start never touches the network: same answer, no request, even
  // with the hub gone.
  const size_t n = hub_.request_count();
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", opts()), dir);
  EXPECT_EQ(hub_.request_count(), n);
  hub_.stop();
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", opts()), dir);
  EXPECT_EQ(md::resolve_model("test-org/tiny", "", opts()), dir);  // empty revision = main
  EXPECT_EQ(md::resolve_model("test-org/tiny", kCommit, opts()), dir);

  // Offline mode, from the option and from HF_HUB_OFFLINE.
  md::HubOptions off = opts();
  off.offline = true;
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", off), dir);
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", opts()), dir);
  // HF_HUB_CACHE / HF_HOME locate the same cache.
  md::HubOptions env_opts;
  env_opts.progress = false;
  ::setenv("HF_HUB_CACHE", (tmp_ / "cache").c_str(), 1);
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", env_opts), dir);
  ::unsetenv("HF_HUB_CACHE");
  fs::create_directories(tmp_ / "hf_home");
  fs::rename(tmp_ / "cache", tmp_ / "hf_home" / "hub");
  EXPECT_EQ(md::hub_cache_dir(), (tmp_ / "hf_home" / "hub").string());
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", env_opts),
            (tmp_ / "hf_home" / "hub" / "models--test-org--tiny" / "snapshots" / kCommit).string());
}

TEST_F(HubTest, RemoteCodeIsFetchedWhenTheRepoHasItAndRememberedWhenNot) {
  // test-org/tiny has no moondream.py: one HEAD, remembered in .no_exist/,
  // never asked again (a second resolve needs no network at all).
  const std::string dir = md::resolve_model("test-org/tiny", "main", opts());
  const fs::path st = storage("models--test-org--tiny");
  EXPECT_FALSE(fs::exists(fs::path(dir) / "moondream.py"));
  EXPECT_TRUE(fs::exists(st / ".no_exist" / kCommit / "moondream.py"));
  md::HubOptions dead = opts();
  dead.endpoint = "http://127.0.0.1:" + std::to_string(dead_port());
  EXPECT_EQ(md::resolve_model("test-org/tiny", "main", dead), dir);

  // A 2025-06-21-style repo ships it: downloaded with the model.
  MockRepo r = hub_.repos["test-org/tiny"];
  r.commit = "1111111111222222222233333333334444444444";
  r.files["moondream.py"] = {"tokenizer = Tokenizer.from_pretrained(\"moondream/starmie-v1\")\n", false};
  hub_.repos["test-org/new"] = r;
  const std::string nd = md::resolve_model("test-org/new", "main", opts());
  EXPECT_EQ(read_file(fs::path(nd) / "moondream.py"), r.files["moondream.py"].content);
}

TEST_F(HubTest, TokenizerResolvesFromAFileADirectoryOrTheCache) {
  // A repo holding only a tokenizer, as moondream/starmie-v1.
  MockRepo tok;
  tok.commit = "5555555555666666666677777777778888888888";
  tok.refs = {"main"};
  tok.files["tokenizer.json"] = {tokenizer_, false};
  hub_.repos["moondream/starmie-v1"] = tok;
  const std::string path = md::resolve_tokenizer("moondream/starmie-v1", opts());
  EXPECT_EQ(read_file(path), tokenizer_);
  EXPECT_NE(path.find("models--moondream--starmie-v1"), std::string::npos) << path;
  // Then offline, from the cache; a file and its directory are used as they are.
  md::HubOptions off = opts();
  off.offline = true;
  EXPECT_EQ(md::resolve_tokenizer("moondream/starmie-v1", off), path);
  EXPECT_EQ(md::resolve_tokenizer(path, off), path);
  EXPECT_EQ(md::resolve_tokenizer(fs::path(path).parent_path().string(), off), path);
  // Missing: one error saying where it looked.
  const std::string e = error_of([&] { md::resolve_tokenizer("other-org/none", off); });
  EXPECT_NE(e.find("other-org/none"), std::string::npos) << e;
  EXPECT_NE(e.find((tmp_ / "cache").string()), std::string::npos) << e;
  EXPECT_NE(error_of([&] { md::resolve_tokenizer((tmp_ / "nothing-here.json").string(), off); }).find("does not exist"),
            std::string::npos);
}

TEST_F(HubTest, OfflineWithoutCacheFailsClearlyWithoutNetwork) {
  ::setenv("HF_HUB_OFFLINE", "1", 1);
  const std::string msg = error_of([&] { md::resolve_model("test-org/tiny", "main", opts()); });
  EXPECT_NE(msg.find("offline"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HF_HUB_OFFLINE"), std::string::npos) << msg;
  EXPECT_NE(msg.find("test-org/tiny@main"), std::string::npos) << msg;
  EXPECT_EQ(hub_.request_count(), 0u);
}

TEST_F(HubTest, ExistingDirectoryIsReturnedAsIs) {
  const fs::path d = tmp_ / "local-model";
  fs::create_directories(d);
  EXPECT_EQ(md::resolve_model(d.string(), "main", opts()), d.string());
  EXPECT_EQ(hub_.request_count(), 0u);
  // Neither a directory nor a repo id.
  std::string msg = error_of([&] { md::resolve_model((tmp_ / "no/such/dir").string(), "main", opts()); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  write_file(tmp_ / "file", "x");
  msg = error_of([&] { md::resolve_model((tmp_ / "file").string(), "main", opts()); });
  EXPECT_NE(msg.find("not a directory"), std::string::npos) << msg;
  EXPECT_EQ(hub_.request_count(), 0u);
}

TEST_F(HubTest, UnknownRepoOrRevisionIs404) {
  std::string msg = error_of([&] { md::resolve_model("test-org/nope", "main", opts()); });
  EXPECT_NE(msg.find("repository test-org/nope not found"), std::string::npos) << msg;
  msg = error_of([&] { md::resolve_model("test-org/tiny", "v9", opts()); });
  EXPECT_NE(msg.find("revision 'v9' not found"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(storage("models--test-org--nope") / "snapshots"));
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "refs" / "v9"));
  // A file the repo lacks.
  md::HubOptions o = opts();
  o.files = {"config.json", "preprocessor_config.json"};
  msg = error_of([&] { md::resolve_model("test-org/tiny", "main", o); });
  EXPECT_NE(msg.find("preprocessor_config.json not found in test-org/tiny@main"), std::string::npos) << msg;
}

TEST_F(HubTest, PrivateRepoNeedsHfToken) {
  std::string msg = error_of([&] { md::resolve_model("test-org/private", "main", opts()); });
  EXPECT_NE(msg.find("HTTP 401"), std::string::npos) << msg;
  EXPECT_NE(msg.find("HF_TOKEN"), std::string::npos) << msg;

  md::HubOptions wrong = opts();
  wrong.token = "guess";
  msg = error_of([&] { md::resolve_model("test-org/private", "main", wrong); });
  EXPECT_NE(msg.find("invalid or has no access"), std::string::npos) << msg;

  ::setenv("HF_TOKEN", "secret", 1);
  const std::string dir = md::resolve_model("test-org/private", "main", opts());
  EXPECT_EQ(read_file(fs::path(dir) / "model.safetensors"), weights_);
  bool saw_token = false;
  for (const auto& r : hub_.requests()) {
    if (r.path.find("/resolve/") != std::string::npos && r.header("authorization") == "Bearer secret") {
      saw_token = true;
    }
  }
  EXPECT_TRUE(saw_token);
}

TEST_F(HubTest, TokenFileFromHfHome) {
  write_file(tmp_ / "hf_home" / "token", "secret\n");
  const std::string dir = md::resolve_model("test-org/private", "main", opts());
  EXPECT_EQ(read_file(fs::path(dir) / "config.json"), config_);
}

TEST_F(HubTest, ShardedRepoFetchesIndexAndEveryShard) {
  const std::string dir = md::resolve_model("test-org/sharded", "main", opts());
  EXPECT_EQ(dir, (storage("models--test-org--sharded") / "snapshots" / kShardCommit).string());
  EXPECT_EQ(read_file(fs::path(dir) / "model-00001-of-00002.safetensors"), shard1_);
  EXPECT_EQ(read_file(fs::path(dir) / "model-00002-of-00002.safetensors"), shard2_);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  EXPECT_EQ(fs::read_symlink(fs::path(dir) / "model-00002-of-00002.safetensors").string(),
            "../../blobs/" + sha256_hex(shard2_));
  EXPECT_EQ(gets_of("/cdn/" + sha256_hex(shard1_)), 1);  // shared by two tensors, fetched once
  // The cache check understands shards.
  const size_t n = hub_.request_count();
  md::HubOptions off = opts();
  off.offline = true;
  EXPECT_EQ(md::resolve_model("test-org/sharded", "main", off), dir);
  EXPECT_EQ(hub_.request_count(), n);
  // A deleted shard blob makes the snapshot incomplete: offline fails naming it.
  fs::remove(storage("models--test-org--sharded") / "blobs" / sha256_hex(shard2_));
  const std::string msg = error_of([&] { md::resolve_model("test-org/sharded", "main", off); });
  EXPECT_NE(msg.find("lacks model.safetensors"), std::string::npos) << msg;
  // Online, only the missing shard is fetched again.
  EXPECT_EQ(md::resolve_model("test-org/sharded", "main", opts()), dir);
  EXPECT_EQ(read_file(fs::path(dir) / "model-00002-of-00002.safetensors"), shard2_);
  EXPECT_EQ(gets_of("/cdn/" + sha256_hex(shard1_)), 1);
  EXPECT_EQ(gets_of("/cdn/" + sha256_hex(shard2_)), 2);
}

TEST_F(HubTest, CommitRevisionTagAndRenamedRepo) {
  const std::string dir = md::resolve_model("test-org/tiny", kCommit, opts());
  EXPECT_EQ(dir, (storage("models--test-org--tiny") / "snapshots" / kCommit).string());
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "refs"));  // a commit needs no ref
  // A tag resolving to the same commit reuses the blobs without a CDN download.
  const size_t cdn = gets_of("/cdn/" + sha256_hex(weights_));
  EXPECT_EQ(md::resolve_model("test-org/tiny", "2025-01-09", opts()), dir);
  EXPECT_EQ(read_file(storage("models--test-org--tiny") / "refs" / "2025-01-09"), kCommit);
  EXPECT_EQ(gets_of("/cdn/" + sha256_hex(weights_)), static_cast<int>(cdn));
  // A renamed repo answers with a relative redirect, which is followed.
  hub_.renamed["old-org/tiny"] = "test-org/tiny";
  const std::string old = md::resolve_model("old-org/tiny", "main", opts());
  EXPECT_EQ(old, (storage("models--old-org--tiny") / "snapshots" / kCommit).string());
  EXPECT_EQ(read_file(fs::path(old) / "model.safetensors"), weights_);
}

TEST_F(HubTest, ServerIgnoringRangeRestartsFromZero) {
  const std::string sha = sha256_hex(weights_);
  const fs::path part = storage("models--test-org--tiny") / "blobs" / (sha + ".incomplete");
  write_file(part, std::string(5000, 'x'));  // garbage a previous run left
  hub_.ignore_range.insert(sha);
  const std::string dir = md::resolve_model("test-org/tiny", "main", opts());
  EXPECT_EQ(ranges_for(sha), std::vector<std::string>{"bytes=5000-"});
  EXPECT_EQ(read_file(fs::path(dir) / "model.safetensors"), weights_);
  EXPECT_FALSE(fs::exists(part));
}

TEST_F(HubTest, CorruptDownloadIsRemovedAndNotPublished) {
  const std::string sha = sha256_hex(weights_);
  const fs::path blobs = storage("models--test-org--tiny") / "blobs";
  hub_.corrupt.insert(sha);
  const std::string msg = error_of([&] { md::resolve_model("test-org/tiny", "main", opts()); });
  EXPECT_NE(msg.find("sha256 mismatch for model.safetensors"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(blobs / sha));
  EXPECT_FALSE(fs::exists(blobs / (sha + ".incomplete")));
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "snapshots" / kCommit / "model.safetensors"));
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "refs" / "main"));
  hub_.corrupt.clear();
  const std::string dir = md::resolve_model("test-org/tiny", "main", opts());
  EXPECT_EQ(read_file(fs::path(dir) / "model.safetensors"), weights_);
}

TEST_F(HubTest, SizeMismatchIsAnError) {
  const std::string sha = sha256_hex(weights_);
  hub_.linked_size[sha] = static_cast<long long>(weights_.size()) - 10;
  const std::string msg = error_of([&] { md::resolve_model("test-org/tiny", "main", opts()); });
  EXPECT_NE(msg.find("size mismatch for model.safetensors"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "blobs" / sha));
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "blobs" / (sha + ".incomplete")));
}

TEST_F(HubTest, ConnectionThatKeepsDroppingGivesUp) {
  const std::string sha = sha256_hex(weights_);
  hub_.cut_always.insert(sha);
  const std::string msg = error_of([&] { md::resolve_model("test-org/tiny", "main", opts()); });
  EXPECT_NE(msg.find("cannot download"), std::string::npos) << msg;
  EXPECT_NE(msg.find("attempts"), std::string::npos) << msg;
  EXPECT_EQ(gets_of("/cdn/" + sha), 5);
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "blobs" / sha));
}

TEST_F(HubTest, UnreachableHubIsANetworkError) {
  md::HubOptions o = opts();
  o.endpoint = "http://127.0.0.1:" + std::to_string(dead_port());
  const std::string msg = error_of([&] { md::resolve_model("test-org/tiny", "main", o); });
  EXPECT_NE(msg.find("cannot download " + o.endpoint + "/test-org/tiny/resolve/main/config.json"), std::string::npos)
      << msg;
}

TEST_F(HubTest, ReusesACacheWrittenByThePythonTools) {
  // The layout huggingface_hub leaves behind, built by hand.
  const fs::path st = storage("models--vikhyatk--moondream2");
  const std::string commit = "aaaaaaaaaabbbbbbbbbbccccccccccdddddddddd";
  // (moondream.py: the remote code, which transformers stores next to the weights.)
  const std::map<std::string, std::string> files = {{"config.json", config_},
                                                    {"model.safetensors", weights_},
                                                    {"tokenizer.json", tokenizer_},
                                                    {"moondream.py", "# remote code\n"}};
  for (const auto& [name, content] : files) {
    const std::string etag = sha256_hex(content);
    write_file(st / "blobs" / etag, content);
    fs::create_directories(st / "snapshots" / commit);
    fs::create_symlink("../../blobs/" + etag, st / "snapshots" / commit / name);
  }
  write_file(st / "refs" / "2025-01-09", commit);
  md::HubOptions o = opts();
  o.endpoint = "http://127.0.0.1:" + std::to_string(dead_port());
  const std::string dir = md::resolve_model("vikhyatk/moondream2", "2025-01-09", o);
  EXPECT_EQ(dir, (st / "snapshots" / commit).string());
  EXPECT_EQ(read_file(fs::path(dir) / "model.safetensors"), weights_);
  // A revision not in refs needs the network (here: unreachable).
  EXPECT_NE(error_of([&] { md::resolve_model("vikhyatk/moondream2", "main", o); }).find("cannot download"),
            std::string::npos);
}

TEST_F(HubTest, WriteErrorKeepsAValidPartialFileThatResumes) {
  const std::string sha = sha256_hex(weights_);
  const fs::path blobs = storage("models--test-org--tiny") / "blobs";
  const long kLimit = 64 * 1024;
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: files may not grow beyond 64 KiB (as on a full disk).
    ::close(pipefd[0]);
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit rl{static_cast<rlim_t>(kLimit), static_cast<rlim_t>(kLimit)};
    ::setrlimit(RLIMIT_FSIZE, &rl);
    std::string msg = "(no error)";
    try {
      md::resolve_model("test-org/tiny", "main", opts());
    } catch (const md::Error& e) {
      msg = e.what();
    } catch (const std::exception& e) {
      msg = std::string("other exception: ") + e.what();
    }
    [[maybe_unused]] ssize_t w = ::write(pipefd[1], msg.data(), msg.size());
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[1024];
  for (ssize_t r; (r = ::read(pipefd[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(r));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_NE(msg.find("cannot write " + (blobs / (sha + ".incomplete")).string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_NE(msg.find("resumes"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;

  // No blob was published; the partial file is a correct prefix.
  EXPECT_FALSE(fs::exists(blobs / sha));
  EXPECT_FALSE(fs::exists(storage("models--test-org--tiny") / "snapshots" / kCommit / "model.safetensors"));
  const std::string part = read_file(blobs / (sha + ".incomplete"));
  EXPECT_EQ(part.size(), static_cast<size_t>(kLimit));
  EXPECT_EQ(part, weights_.substr(0, part.size()));

  // With space again, the next start resumes from there.
  const std::string dir = md::resolve_model("test-org/tiny", "main", opts());
  EXPECT_EQ(ranges_for(sha), std::vector<std::string>{"bytes=" + std::to_string(kLimit) + "-"});
  EXPECT_EQ(read_file(fs::path(dir) / "model.safetensors"), weights_);
  EXPECT_FALSE(fs::exists(blobs / (sha + ".incomplete")));
}

TEST_F(HubTest, ConcurrentResolvesDownloadOnce) {
  std::vector<std::string> dirs(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i) {
    ts.emplace_back([&, i] {
      try {
        dirs[i] = md::resolve_model("test-org/tiny", "main", opts());
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : ts) t.join();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(errors[i], "");
    EXPECT_EQ(dirs[i], dirs[0]);
  }
  EXPECT_EQ(gets_of("/cdn/" + sha256_hex(weights_)), 1);
  EXPECT_EQ(read_file(fs::path(dirs[0]) / "model.safetensors"), weights_);
}

TEST(HubRepoId, Shapes) {
  EXPECT_TRUE(md::is_hub_repo_id("vikhyatk/moondream2"));
  EXPECT_TRUE(md::is_hub_repo_id("gpt2"));
  EXPECT_TRUE(md::is_hub_repo_id("org-x/model_v1.5"));
  EXPECT_FALSE(md::is_hub_repo_id("/abs/path"));
  EXPECT_FALSE(md::is_hub_repo_id("./model"));
  EXPECT_FALSE(md::is_hub_repo_id("a/b/c"));
  EXPECT_FALSE(md::is_hub_repo_id("../x"));
  EXPECT_FALSE(md::is_hub_repo_id("org/"));
  EXPECT_FALSE(md::is_hub_repo_id(""));
  EXPECT_FALSE(md::is_hub_repo_id("org/na me"));
}

}  // namespace
