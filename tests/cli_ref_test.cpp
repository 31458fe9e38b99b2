// The `moondream` command-line tool end to end on the tiny model: --json
// output carries the reference's greedy tokens for every test image, text
// mode streams, and bad input exits non-zero with one line on stderr.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "testdata.h"

namespace md {
namespace {

using testdata::run_command;
using testdata::shell_quote;

std::string cli() { return std::string(MOONDREAM_BINARY_DIR) + "/moondream"; }
std::string model() { return testdata::tiny_model().string(); }

// --kv-cache int8 runs the whole task on int8 KV rows: a caption whose
// first token is the reference's (int8 KV's top-1 agreement with fp32 rows
// is measured in quant_ref_test).
TEST(Cli, Int8KvCacheCaptions) {
  const testdata::Case c = testdata::cases().front();
  const auto meta = testdata::read_json(c.expected / "meta.json");
  const auto r = run_command(cli() + " caption --kv-cache int8 --model " + shell_quote(model()) + " --image " +
                             shell_quote(c.image.string()) + " --temperature 0 --json --max-tokens 8");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  const auto tokens = j["tokens"].get<std::vector<int>>();
  ASSERT_FALSE(tokens.empty());
  EXPECT_EQ(tokens.front(), meta["caption_normal"].get<std::vector<int>>().front());
}

TEST(Cli, CaptionJsonTokensMatchTheReferenceOnEveryImage) {
  for (const auto& c : testdata::cases()) {
    const auto meta = testdata::read_json(c.expected / "meta.json");
    const auto r = run_command(cli() + " caption --kv-cache f32 --model " + shell_quote(model()) + " --image " +
                               shell_quote(c.image.string()) + " --temperature 0 --json --max-tokens " +
                               std::to_string(meta["max_tokens"].get<int>()));
    ASSERT_EQ(r.status, 0) << c.name;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["tokens"].get<std::vector<int>>(), meta["caption_normal"].get<std::vector<int>>()) << c.name;
    EXPECT_TRUE(j["caption"].is_string());
    for (const char* k : {"decode_image_s", "vision_s", "prefill_s", "decode_s", "decode_tokens_per_s"})
      EXPECT_TRUE(j["timings"][k].is_number()) << k;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "one line of JSON";
  }
}

TEST(Cli, QueryDetectPointJson) {
  const auto c = testdata::cases().front();
  const auto meta = testdata::read_json(c.expected / "meta.json");
  const std::string base =
      " --kv-cache f32 --model " + shell_quote(model()) + " --image " + shell_quote(c.image.string());
  auto q =
      run_command(cli() + " query" + base + " --question " + shell_quote(meta["query_question"].get<std::string>()) +
                  " --temperature 0 --json --max-tokens " + std::to_string(meta["max_tokens"].get<int>()));
  ASSERT_EQ(q.status, 0);
  auto jq = nlohmann::json::parse(q.out);
  EXPECT_EQ(jq["tokens"].get<std::vector<int>>(), meta["query"].get<std::vector<int>>());
  EXPECT_TRUE(jq["answer"].is_string());

  auto d = run_command(cli() + " detect" + base + " --object cat --json");
  ASSERT_EQ(d.status, 0);
  auto jd = nlohmann::json::parse(d.out);
  ASSERT_EQ(jd["objects"].size(), meta["detect"].size());
  for (size_t i = 0; i < jd["objects"].size(); ++i)
    EXPECT_NEAR(jd["objects"][i]["x_min"].get<double>(), meta["detect"][i]["x_min"].get<double>(), 1e-6);

  auto p = run_command(cli() + " point" + base + " --object dog --json --max-objects 2");
  ASSERT_EQ(p.status, 0);
  auto jp = nlohmann::json::parse(p.out);
  EXPECT_LE(jp["points"].size(), 2u);
  for (size_t i = 0; i < jp["points"].size(); ++i)
    EXPECT_NEAR(jp["points"][i]["x"].get<double>(), meta["point"][i]["x"].get<double>(), 1e-6);
}

// Revision 2025-06-21 from the command line: the tokenizer found in the hub
// cache (offline), --reasoning, --spatial-ref, text-only query, gaze; --json
// prompt_ids / reasoning / reasoning_tokens equal the PyTorch reference.
TEST(Cli, Revision20250621TasksMatchTheReference) {
  const auto e = testdata::read_json(testdata::root() / "expected" / "revision-2025-06-21.json");
  const std::string env =
      "HF_HUB_CACHE=" + shell_quote((testdata::root() / "hf-cache").string()) + " HF_HUB_OFFLINE=1 ";
  const std::string img = (testdata::root() / "images" / e["image"].get<std::string>()).string();
  const std::string base = env + cli() + " %s --kv-cache f32 --model " +
                           shell_quote((testdata::root() / "models" / "tiny-2025-06-21").string());
  auto run = [&](const std::string& task, const std::string& args) {
    std::string cmd = base;
    cmd.replace(cmd.find("%s"), 2, task);
    const auto r = run_command(cmd + " " + args + " --json 2>&1");
    EXPECT_EQ(r.status, 0) << cmd << " " << args << "\n" << r.out;
    return r.status == 0 ? nlohmann::json::parse(r.out) : nlohmann::json();
  };
  const std::string q = " --question " + shell_quote("What is in this image?") + " --temperature 0 --max-tokens " +
                        std::to_string(e["max_tokens"].get<int>());
  auto ids = [](const nlohmann::json& j) { return j.get<std::vector<int>>(); };

  nlohmann::json j = run("query", "--image " + shell_quote(img) + q + " --reasoning");
  EXPECT_EQ(ids(j["prompt_ids"]), ids(e["reasoning"]["prompt"]));
  EXPECT_EQ(ids(j["reasoning_tokens"]), ids(e["reasoning"]["reasoning_tokens"]));
  EXPECT_EQ(ids(j["tokens"]), ids(e["reasoning"]["tokens"]));
  EXPECT_TRUE(j["reasoning"]["text"].is_string());
  EXPECT_TRUE(j["reasoning"]["grounding"].is_array());

  j = run("query", "--image " + shell_quote(img) + q + " --spatial-ref 0.25,0.75 --spatial-ref 0.1,0.2,0.5,0.9");
  EXPECT_EQ(ids(j["prompt_ids"]), ids(e["query_spatial"]["prompt"]));
  EXPECT_EQ(ids(j["tokens"]), ids(e["query_spatial"]["tokens"]));

  j = run("query", q);  // no image
  EXPECT_EQ(ids(j["prompt_ids"]), ids(e["query_text_only"]["prompt"]));
  EXPECT_EQ(ids(j["tokens"]), ids(e["query_text_only"]["tokens"]));

  j = run("point", "--image " + shell_quote(img) + " --object cat --max-objects 8 --spatial-ref 0.25,0.75");
  EXPECT_EQ(ids(j["prompt_ids"]), ids(e["point_spatial"]["prompt"]));
  ASSERT_EQ(j["points"].size(), e["point_spatial"]["points"].size());

  j = run("gaze", "--image " + shell_quote(img) + " --eye 0.4,0.3");
  EXPECT_EQ(ids(j["prompt_ids"]), ids(e["gaze"]["prompt"]));
  if (e["gaze"]["gaze"].is_null()) {
    EXPECT_TRUE(j["gaze"].is_null());
  } else {
    EXPECT_NEAR(j["gaze"]["x"].get<double>(), e["gaze"]["gaze"]["x"].get<double>(), 1e-6);
    EXPECT_NEAR(j["gaze"]["y"].get<double>(), e["gaze"]["gaze"]["y"].get<double>(), 1e-6);
  }

  // Bad references and unsupported skills: non-zero exit, one line naming the problem.
  std::string cmd = base;
  cmd.replace(cmd.find("%s"), 2, "query");
  for (const char* bad : {"--spatial-ref 1.5,0.5", "--spatial-ref 0.1,0.2,0.3", "--spatial-ref x,y"}) {
    const auto r = run_command(cmd + " --image " + shell_quote(img) + q + " " + std::string(bad) + " 2>&1");
    EXPECT_NE(r.status, 0) << bad;
    EXPECT_NE(r.out.find("spatial-ref"), std::string::npos) << r.out;
  }
  const auto old = run_command(cli() + " query --kv-cache f32 --model " + shell_quote(model()) + " --image " +
                               shell_quote(img) + q + " --reasoning 2>&1");
  EXPECT_NE(old.status, 0);
  EXPECT_NE(old.out.find("2025-06-21"), std::string::npos) << old.out;
}

TEST(Cli, TextModeStreamsTheSameCaption) {
  const auto c = testdata::cases().front();
  const std::string base = " --kv-cache f32 --model " + shell_quote(model()) + " --image " +
                           shell_quote(c.image.string()) + " --temperature 0 --max-tokens 24";
  const auto j = run_command(cli() + " caption" + base + " --json");
  const auto t = run_command(cli() + " caption" + base);
  ASSERT_EQ(j.status, 0);
  ASSERT_EQ(t.status, 0);
  EXPECT_EQ(t.out, nlohmann::json::parse(j.out)["caption"].get<std::string>() + "\n");
}

TEST(Cli, SeedMakesSamplingReproducible) {
  const auto c = testdata::cases().front();
  const std::string cmd = cli() + " caption --kv-cache f32 --model " + shell_quote(model()) + " --image " +
                          shell_quote(c.image.string()) + " --temperature 1 --top-p 0.9 --json --max-tokens 20";
  const auto a = run_command(cmd + " --seed 5"), b = run_command(cmd + " --seed 5"), d = run_command(cmd + " --seed 6");
  ASSERT_EQ(a.status, 0);
  const auto ta = nlohmann::json::parse(a.out)["tokens"], tb = nlohmann::json::parse(b.out)["tokens"];
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, nlohmann::json::parse(d.out)["tokens"]);
}

TEST(Cli, BadInputExitsNonZeroWithOneLineError) {
  const std::string tmp = testing::TempDir();
  const std::string text_file = tmp + "/not_an_image.png";
  std::ofstream(text_file) << "hello, I am text";
  const auto c = testdata::cases().front();
  const std::string img = shell_quote(c.image.string());
  const std::string m = shell_quote(model());
  const std::pair<std::string, std::string> cases[] = {
      {"caption --model /nonexistent/model --image " + img, "nonexistent"},
      {"caption --model " + m + " --image /nonexistent.png", "nonexistent.png"},
      {"caption --model " + m + " --image " + shell_quote(text_file), "image"},
      {"caption --model " + m + " --image " + img + " --length huge", "length"},
      {"caption --model " + m + " --image " + img + " --top-p 0", "top-p"},
      {"caption --model " + m + " --image " + img + " --max-tokens 0", "max-tokens"},
      {"query --model " + m + " --image " + img, "question"},
      {"detect --model " + m + " --image " + img, "object"},
      {"frobnicate --model " + m, ""},
      {"caption --model " + m + " --image " + img + " --max-tokens abc", "max-tokens"},
      {"caption --model " + m + " --image " + img + " --kv-cache int4", "--kv-cache"},
  };
  for (const auto& [args, needle] : cases) {
    const auto r = run_command(cli() + " " + args + " 2>" + tmp + "/err.txt");
    EXPECT_NE(r.status, 0) << args;
    EXPECT_TRUE(r.out.empty()) << args;
    std::ifstream f(tmp + "/err.txt");
    std::string err((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    EXPECT_FALSE(err.empty()) << args;
    EXPECT_LE(std::count(err.begin(), err.end(), '\n'), 1) << args << ": " << err;
    EXPECT_NE(err.find(needle), std::string::npos) << args << ": " << err;
  }
}

}  // namespace
}  // namespace md

namespace md {
namespace {

std::map<std::string, nlohmann::json> read_lines(const std::string& path, size_t* count) {
  std::map<std::string, nlohmann::json> by_image;
  std::ifstream in(path);
  *count = 0;
  for (std::string line; std::getline(in, line); ++*count) {
    const auto j = nlohmann::json::parse(line);
    by_image[j["image"].get<std::string>()] = j;  // the newest line of an image wins
  }
  return by_image;
}

// Batch mode: every test image (and one broken file) through the batching
// engine, 3 at a time; each line carries what the reference gives for that
// image alone; the broken file gets its own error line; a rerun skips what is done.
TEST(Cli, BatchModeAnswersEveryImageAsAloneAndResumes) {
  const auto cases = testdata::cases();
  const std::filesystem::path dir = std::filesystem::path(MOONDREAM_BINARY_DIR) / "cli_batch_test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "images");
  int max_tokens = 0;
  for (const auto& c : cases) {
    std::filesystem::copy_file(c.image, dir / "images" / c.image.filename());
    max_tokens = testdata::read_json(c.expected / "meta.json")["max_tokens"].get<int>();
  }
  { std::ofstream(dir / "images" / "broken.jpg") << "not an image"; }
  const std::string out = (dir / "captions.jsonl").string();
  const std::string cmd = cli() + " caption --kv-cache f32 --model " + shell_quote(model()) + " --images " +
                          shell_quote((dir / "images").string()) + " --out " + shell_quote(out) +
                          " --batch 3 --temperature 0 --max-tokens " + std::to_string(max_tokens);
  auto r = run_command(cmd);
  EXPECT_EQ(r.status, 1) << "one image failed: exit 1 after the others are done";
  size_t lines = 0;
  auto got = read_lines(out, &lines);
  EXPECT_EQ(lines, cases.size() + 1);
  for (const auto& c : cases) {
    const std::string key = (dir / "images" / c.image.filename()).string();
    ASSERT_TRUE(got.count(key)) << key;
    EXPECT_EQ(got[key]["tokens"].get<std::vector<int>>(),
              testdata::read_json(c.expected / "meta.json")["caption_normal"].get<std::vector<int>>())
        << c.name;
  }
  const std::string broken = (dir / "images" / "broken.jpg").string();
  ASSERT_TRUE(got.count(broken));
  EXPECT_NE(got[broken]["error"].get<std::string>().find("not a JPEG"), std::string::npos);

  // The rerun tries only the failed image again.
  r = run_command(cmd);
  EXPECT_EQ(r.status, 1);
  got = read_lines(out, &lines);
  EXPECT_EQ(lines, cases.size() + 2);
  // Without it, nothing is left to do.
  std::filesystem::remove(dir / "images" / "broken.jpg");
  r = run_command(cmd);
  EXPECT_EQ(r.status, 0);
  read_lines(out, &lines);
  EXPECT_EQ(lines, cases.size() + 2);

  // A list file, in its order, for detect; results as the one-image run's.
  {
    std::ofstream list(dir / "list.txt");
    list << "# two images\n" << cases[0].image.string() << "\n\n" << cases[1].image.string() << "\n";
  }
  const std::string dout = (dir / "detect.jsonl").string();
  r = run_command(cli() + " detect --kv-cache f32 --model " + shell_quote(model()) + " --images @" +
                  shell_quote((dir / "list.txt").string()) + " --out " + shell_quote(dout) + " --object cat");
  ASSERT_EQ(r.status, 0);
  got = read_lines(dout, &lines);
  EXPECT_EQ(lines, 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto one = run_command(cli() + " detect --kv-cache f32 --model " + shell_quote(model()) + " --image " +
                                 shell_quote(cases[i].image.string()) + " --object cat --json");
    ASSERT_EQ(one.status, 0);
    EXPECT_EQ(got[cases[i].image.string()]["objects"], nlohmann::json::parse(one.out)["objects"]);
  }
  // --images needs --out, and excludes --image.
  EXPECT_NE(run_command(cli() + " caption --model " + shell_quote(model()) + " --images " +
                        shell_quote((dir / "images").string()))
                .status,
            0);
}

}  // namespace
}  // namespace md
