// config.json parsing: defaults, overrides, type errors, validation, templates.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const md::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected md::Error, got other exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected md::Error, nothing thrown";
  return "";
}

#define EXPECT_ERROR_HAS(expr, ...)                                                         \
  do {                                                                                      \
    const std::string msg_ = error_of([&] { (void)(expr); });                               \
    for (const std::string& sub_ : std::vector<std::string>{__VA_ARGS__})                   \
      EXPECT_NE(msg_.find(sub_), std::string::npos) << "'" << sub_ << "' not in: " << msg_; \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << "multi-line message: " << msg_;        \
  } while (0)

md::ModelConfig parse(const json& j) { return md::parse_model_config(j.dump(), "config.json"); }

// {"config": {section: {key: value}}} on top of an empty config.
json with(const std::string& section, const std::string& key, const json& value) {
  return {{"config", {{section, {{key, value}}}}}};
}

void expect_defaults(const md::ModelConfig& c) {
  const md::ModelConfig d;
  EXPECT_EQ(c.text.dim, 2048);
  EXPECT_EQ(c.text.ff_dim, 8192);
  EXPECT_EQ(c.text.n_layers, 24);
  EXPECT_EQ(c.text.vocab_size, 51200);
  EXPECT_EQ(c.text.max_context, 2048);
  EXPECT_EQ(c.text.n_heads, 32);
  EXPECT_EQ(c.text.n_kv_heads, 32);
  EXPECT_EQ(c.text.prefix_attn, 730);
  EXPECT_EQ(c.vision.enc_dim, 1152);
  EXPECT_EQ(c.vision.enc_patch_size, 14);
  EXPECT_EQ(c.vision.enc_n_layers, 27);
  EXPECT_EQ(c.vision.enc_ff_dim, 4304);
  EXPECT_EQ(c.vision.enc_n_heads, 16);
  EXPECT_EQ(c.vision.proj_out_dim, 2048);
  EXPECT_EQ(c.vision.crop_size, 378);
  EXPECT_EQ(c.vision.in_channels, 3);
  EXPECT_EQ(c.vision.max_crops, 12);
  EXPECT_EQ(c.vision.overlap_margin, 4);
  EXPECT_EQ(c.vision.proj_inner_dim, 8192);
  EXPECT_EQ(c.region.dim, 2048);
  EXPECT_EQ(c.region.coord_feat_dim, 256);
  EXPECT_EQ(c.region.coord_out_dim, 1024);
  EXPECT_EQ(c.region.size_feat_dim, 512);
  EXPECT_EQ(c.region.size_out_dim, 2048);
  EXPECT_EQ(c.region.inner_dim, 8192);
  EXPECT_EQ(c.tokenizer.bos_id, 50256);
  EXPECT_EQ(c.tokenizer.eos_id, 50256);
  EXPECT_EQ(c.tokenizer.caption_short, (std::vector<int>{198, 198, 16438, 8305, 25}));
  EXPECT_EQ(c.tokenizer.caption_normal, (std::vector<int>{198, 198, 24334, 1159, 25}));
  EXPECT_EQ(c.tokenizer.caption_long, (std::vector<int>{198, 198, 14617, 8305, 25}));
  EXPECT_EQ(c.tokenizer.query_prefix, (std::vector<int>{198, 198, 24361, 25}));
  EXPECT_EQ(c.tokenizer.query_suffix, (std::vector<int>{198, 198, 33706, 25}));
  EXPECT_EQ(c.tokenizer.detect_prefix, (std::vector<int>{198, 198, 47504, 25}));
  EXPECT_EQ(c.tokenizer.detect_suffix, (std::vector<int>{628}));
  EXPECT_EQ(c.tokenizer.point_prefix, (std::vector<int>{198, 198, 12727, 25}));
  EXPECT_EQ(c.tokenizer.point_suffix, (std::vector<int>{628}));
}

// The tiny test model's config (tools/make_model.cpp), in both layouts.
json tiny_inner() {
  return {{"text",
           {{"dim", 128},
            {"ff_dim", 256},
            {"n_layers", 2},
            {"vocab_size", 51200},
            {"max_context", 2048},
            {"n_heads", 2},
            {"n_kv_heads", 1},
            {"prefix_attn", 730}}},
          {"vision",
           {{"enc_dim", 64},
            {"enc_patch_size", 14},
            {"enc_n_layers", 2},
            {"enc_ff_dim", 128},
            {"enc_n_heads", 4},
            {"proj_out_dim", 128},
            {"crop_size", 378},
            {"in_channels", 3},
            {"max_crops", 6},
            {"overlap_margin", 4},
            {"proj_inner_dim", 256}}},
          {"region",
           {{"dim", 128},
            {"coord_feat_dim", 64},
            {"coord_out_dim", 1024},
            {"size_feat_dim", 32},
            {"size_out_dim", 2048},
            {"inner_dim", 256}}},
          {"tokenizer", {{"bos_id", 1}, {"eos_id", 2}}}};
}

void expect_tiny(const md::ModelConfig& c) {
  EXPECT_EQ(c.text.dim, 128);
  EXPECT_EQ(c.text.ff_dim, 256);
  EXPECT_EQ(c.text.n_layers, 2);
  EXPECT_EQ(c.text.n_heads, 2);
  EXPECT_EQ(c.text.n_kv_heads, 1);
  EXPECT_EQ(c.vision.enc_dim, 64);
  EXPECT_EQ(c.vision.enc_n_layers, 2);
  EXPECT_EQ(c.vision.enc_ff_dim, 128);
  EXPECT_EQ(c.vision.enc_n_heads, 4);
  EXPECT_EQ(c.vision.proj_out_dim, 128);
  EXPECT_EQ(c.vision.max_crops, 6);
  EXPECT_EQ(c.vision.proj_inner_dim, 256);
  EXPECT_EQ(c.region.dim, 128);
  EXPECT_EQ(c.region.coord_feat_dim, 64);
  EXPECT_EQ(c.region.size_feat_dim, 32);
  EXPECT_EQ(c.region.inner_dim, 256);
  EXPECT_EQ(c.tokenizer.bos_id, 1);
  EXPECT_EQ(c.tokenizer.eos_id, 2);
  EXPECT_EQ(c.tokenizer.detect_suffix, (std::vector<int>{628}));  // templates untouched
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("md_cfg_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& text) { std::ofstream(dir_ / "config.json", std::ios::binary) << text; }
  fs::path dir_;
};

// ----------------------------------------------------------------- tests

TEST(Config, Defaults) {
  expect_defaults(md::ModelConfig{});
  expect_defaults(parse({{"config", json::object()}}));
  expect_defaults(parse({{"config", nullptr}}));
  expect_defaults(parse(json::object()));
  // The official file: architectures, auto_map and friends are ignored.
  expect_defaults(md::parse_model_config(R"({
    "architectures": ["HfMoondream"],
    "auto_map": {"AutoConfig": "hf_moondream.HfConfig", "AutoModelForCausalLM": "hf_moondream.HfMoondream"},
    "config": {},
    "model_type": "moondream1",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.0"
  })",
                                         "config.json"));
  // Empty / null sections keep defaults too.
  expect_defaults(
      parse({{"config", {{"text", json::object()}, {"vision", nullptr}, {"tokenizer", {{"templates", nullptr}}}}}}));
}

TEST(Config, OverridesInBothLayouts) {
  expect_tiny(parse({{"architectures", {"HfMoondream"}}, {"config", tiny_inner()}}));
  expect_tiny(parse(tiny_inner()));
  // Partial override: only the given key changes.
  md::ModelConfig c = parse(with("text", "n_layers", 3));
  EXPECT_EQ(c.text.n_layers, 3);
  EXPECT_EQ(c.text.dim, 2048);
  c = parse(with("vision", "max_crops", 1));
  EXPECT_EQ(c.vision.max_crops, 1);
  c = parse(with("vision", "overlap_margin", 0));  // a margin may be zero
  EXPECT_EQ(c.vision.overlap_margin, 0);
  c = parse(with("tokenizer", "bos_id", 0));
  EXPECT_EQ(c.tokenizer.bos_id, 0);
  // Unknown keys at every level are ignored.
  json j = tiny_inner();
  j["text"]["group_size"] = "whatever";
  j["vision"]["new_thing"] = {1, 2};
  j["extra_section"] = 5;
  j["tokenizer"]["templates"]["segment"] = {{"prefix", {1, 2}}};
  expect_tiny(parse({{"config", j}}));
}

TEST(Config, TypeErrorsNameTheKey) {
  EXPECT_ERROR_HAS(parse(with("text", "dim", "2048")), "config.json: config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "dim", 2048.0)), "config.json: config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "dim", 2048.5)), "config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "dim", true)), "config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "dim", nullptr)), "config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "dim", 0)), "config.text.dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "n_heads", -32)), "config.text.n_heads must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "vocab_size", 1LL << 40)), "config.text.vocab_size must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("text", "vocab_size", -(1LL << 40))),
                   "config.text.vocab_size must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("vision", "crop_size", json::array({378}))), "config.vision.crop_size");
  EXPECT_ERROR_HAS(parse(with("vision", "overlap_margin", -1)),
                   "config.vision.overlap_margin must be a non-negative integer");
  EXPECT_ERROR_HAS(parse(with("region", "inner_dim", "big")), "config.region.inner_dim must be a positive integer");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "eos_id", -1)), "config.tokenizer.eos_id must be a non-negative integer");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "bos_id", "50256")), "config.tokenizer.bos_id");
  // Bare layout: key paths without the "config." prefix.
  EXPECT_ERROR_HAS(parse({{"text", {{"ff_dim", 1.5}}}}), "config.json: text.ff_dim must be a positive integer");
  // Sections must be objects.
  EXPECT_ERROR_HAS(parse({{"config", 5}}), "config.json: config must be an object");
  EXPECT_ERROR_HAS(parse({{"config", {{"text", {1, 2}}}}}), "config.json: config.text must be an object");
  EXPECT_ERROR_HAS(parse({{"config", {{"tokenizer", {{"templates", "x"}}}}}}),
                   "config.tokenizer.templates must be an object");
  EXPECT_ERROR_HAS(md::parse_model_config("[1,2]", "my/config.json"), "my/config.json", "not a JSON object");
}

TEST(Config, BadJsonNamesFileAndPosition) {
  EXPECT_ERROR_HAS(md::parse_model_config("{\"config\": {\"text\": {\"dim\": 12,}}}", "/m/config.json"),
                   "/m/config.json", "invalid JSON", "line 1", "column");
  EXPECT_ERROR_HAS(md::parse_model_config("{\n\"config\":\n  {,\n}", "/m/config.json"), "/m/config.json", "line 3");
  EXPECT_ERROR_HAS(md::parse_model_config("", "/m/config.json"), "/m/config.json", "invalid JSON");
}

TEST(Config, ValidationErrors) {
  auto bad = [](json inner, const std::vector<std::string>& subs) {
    const std::string msg = error_of([&] { parse({{"config", inner}}); });
    for (const auto& s : subs) EXPECT_NE(msg.find(s), std::string::npos) << inner.dump() << " -> " << msg;
    EXPECT_NE(msg.find("config.json: "), std::string::npos) << msg;
  };
  json t = tiny_inner();
  auto mod = [&](const char* sec, const char* key, json v) {
    json j = t;
    j[sec][key] = v;
    return j;
  };
  bad(mod("text", "n_heads", 3), {"config.text.dim (128)", "divisible", "config.text.n_heads (3)"});
  bad(mod("text", "n_heads", 8), {"head dimension", "16", "at least 32"});
  {
    json j = t;
    j["text"]["dim"] = 99;
    j["text"]["n_heads"] = 3;  // head dim 33: odd
    j["vision"]["proj_out_dim"] = 99;
    j["region"]["dim"] = 99;
    bad(j, {"head dimension", "33", "even"});
  }
  bad(mod("text", "n_kv_heads", 3), {"config.text.n_heads (2)", "multiple", "config.text.n_kv_heads (3)"});
  bad(mod("text", "n_kv_heads", 4), {"config.text.n_heads (2)", "multiple"});
  bad(mod("vision", "enc_n_heads", 5), {"config.vision.enc_dim (64)", "divisible", "config.vision.enc_n_heads (5)"});
  bad(mod("vision", "crop_size", 380), {"config.vision.crop_size (380)", "divisible", "enc_patch_size (14)"});
  {
    json j = t;
    j["vision"]["crop_size"] = 112;  // grid 8
    j["text"]["prefix_attn"] = 65;
    j["vision"]["overlap_margin"] = 4;
    bad(j, {"patch grid 8", "overlap_margin (4)"});
    j["vision"]["overlap_margin"] = 3;
    EXPECT_EQ(parse({{"config", j}}).vision.crop_size, 112);
  }
  bad(mod("text", "prefix_attn", 729), {"config.text.prefix_attn (729)", "730"});
  bad(mod("text", "max_context", 730), {"config.text.max_context (730)", "prefix_attn"});
  bad(mod("vision", "proj_out_dim", 256), {"config.vision.proj_out_dim (256)", "config.text.dim (128)"});
  bad(mod("region", "dim", 2048), {"config.region.dim (2048)", "config.text.dim (128)"});
  bad(mod("region", "coord_feat_dim", 63), {"config.region.coord_feat_dim (63)", "even"});
  bad(mod("region", "size_feat_dim", 33), {"config.region.size_feat_dim (33)", "even"});
  bad(mod("tokenizer", "bos_id", 51200), {"config.tokenizer.bos_id (51200)", "vocab_size (51200)"});
  bad(mod("tokenizer", "eos_id", 60000), {"config.tokenizer.eos_id (60000)", "vocab_size"});
  {
    json j = t;
    j["text"]["vocab_size"] = 1000;
    j["tokenizer"] = {{"bos_id", 1}, {"eos_id", 1}};
    bad(j, {"config.tokenizer.templates.caption.short", "16438", "vocab_size (1000)"});
    // bos_id 0 makes it a 2025-06-21 config: its templates are checked.
    j["tokenizer"] = {{"bos_id", 0}, {"eos_id", 0}};
    bad(j, {"config.tokenizer.templates.caption.short", "32708", "vocab_size (1000)"});
  }
  // Only the changed default section: default text dims with a too small region.
  bad({{"region", {{"dim", 1024}}}}, {"config.region.dim (1024)", "config.text.dim (2048)"});
}

TEST(Config, RevisionProfiles) {
  // GPT-2 era by default.
  md::ModelConfig c = parse(tiny_inner());
  EXPECT_EQ(c.revision.family, md::TokenizerFamily::kGpt2);
  EXPECT_EQ(c.revision.name, "2025-01-09");
  EXPECT_TRUE(c.revision.tokenizer_repo.empty());
  EXPECT_TRUE(c.revision.question_leading_space);
  EXPECT_FALSE(c.revision.reasoning);
  EXPECT_EQ(c.tokenizer.answer_id, -1);
  // bos_id 0 in the tokenizer section: starmie era, its ids and templates
  // (docs/MODEL.md sections R1-R2), overridable as before.
  json j = tiny_inner();
  j["tokenizer"] = {{"bos_id", 0}, {"templates", {{"point", {{"prefix", {1, 2, 3}}}}}}};
  c = parse(j);
  EXPECT_EQ(c.revision.family, md::TokenizerFamily::kStarmie);
  EXPECT_EQ(c.revision.name, "2025-06-21");
  EXPECT_EQ(c.revision.tokenizer_repo, "moondream/starmie-v1");
  EXPECT_NE(c.revision.detected_by.find("bos_id"), std::string::npos);
  EXPECT_FALSE(c.revision.question_leading_space);
  EXPECT_TRUE(c.revision.reasoning && c.revision.spatial_refs && c.revision.text_only);
  EXPECT_EQ(c.tokenizer.eos_id, 0);
  EXPECT_EQ(c.tokenizer.answer_id, 3);
  EXPECT_EQ(c.tokenizer.thinking_id, 4);
  EXPECT_EQ(c.tokenizer.coord_id, 5);
  EXPECT_EQ(c.tokenizer.size_id, 6);
  EXPECT_EQ(c.tokenizer.start_ground_points_id, 7);
  EXPECT_EQ(c.tokenizer.end_ground_id, 9);
  EXPECT_EQ(c.tokenizer.caption_normal, (std::vector<int>{1, 32708, 2, 6382, 3}));
  EXPECT_EQ(c.tokenizer.query_prefix, (std::vector<int>{1, 15381, 2}));
  EXPECT_EQ(c.tokenizer.detect_prefix, (std::vector<int>{1, 7235, 476, 2}));
  EXPECT_EQ(c.tokenizer.point_prefix, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(c.tokenizer.point_suffix, (std::vector<int>{3}));
  // The user's choice wins either way.
  c = md::parse_model_config(json{{"config", j}}.dump(), "config.json", md::RevisionChoice::kGpt2);
  EXPECT_EQ(c.revision.family, md::TokenizerFamily::kGpt2);
  EXPECT_NE(c.revision.detected_by.find("user"), std::string::npos);
  c = md::parse_model_config(json{{"config", tiny_inner()}}.dump(), "config.json", md::RevisionChoice::kStarmie);
  EXPECT_EQ(c.revision.family, md::TokenizerFamily::kStarmie);
  md::RevisionChoice rc;
  EXPECT_TRUE(md::parse_revision_choice("2025-06-21", &rc));
  EXPECT_EQ(rc, md::RevisionChoice::kStarmie);
  EXPECT_TRUE(md::parse_revision_choice("auto", &rc));
  EXPECT_FALSE(md::parse_revision_choice("2025-06", &rc));
}

TEST(Config, Templates) {
  json tm = {{"caption", {{"short", {1, 2}}, {"normal", {3}}, {"long", json::array()}}},
             {"query", {{"prefix", {4, 5}}, {"suffix", {6}}}},
             {"detect", {{"prefix", {7}}, {"suffix", {8, 9}}}},
             {"point", {{"prefix", {10}}, {"suffix", {11}}}}};
  md::ModelConfig c = parse(with("tokenizer", "templates", tm));
  EXPECT_EQ(c.tokenizer.caption_short, (std::vector<int>{1, 2}));
  EXPECT_EQ(c.tokenizer.caption_normal, (std::vector<int>{3}));
  EXPECT_TRUE(c.tokenizer.caption_long.empty());
  EXPECT_EQ(c.tokenizer.query_prefix, (std::vector<int>{4, 5}));
  EXPECT_EQ(c.tokenizer.query_suffix, (std::vector<int>{6}));
  EXPECT_EQ(c.tokenizer.detect_prefix, (std::vector<int>{7}));
  EXPECT_EQ(c.tokenizer.detect_suffix, (std::vector<int>{8, 9}));
  EXPECT_EQ(c.tokenizer.point_prefix, (std::vector<int>{10}));
  EXPECT_EQ(c.tokenizer.point_suffix, (std::vector<int>{11}));

  // Null templates (official format for tasks a model lacks) and missing
  // members keep the defaults.
  c = parse(with(
      "tokenizer", "templates",
      {{"caption", nullptr}, {"query", {{"prefix", {4}}}}, {"detect", nullptr}, {"point", {{"suffix", nullptr}}}}));
  const md::TokenizerConfig d;
  EXPECT_EQ(c.tokenizer.caption_short, d.caption_short);
  EXPECT_EQ(c.tokenizer.caption_long, d.caption_long);
  EXPECT_EQ(c.tokenizer.query_prefix, (std::vector<int>{4}));
  EXPECT_EQ(c.tokenizer.query_suffix, d.query_suffix);
  EXPECT_EQ(c.tokenizer.detect_prefix, d.detect_prefix);
  EXPECT_EQ(c.tokenizer.point_suffix, d.point_suffix);

  // Type errors name the template.
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"caption", {{"short", "abc"}}}})),
                   "config.tokenizer.templates.caption.short", "array");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"query", {{"suffix", {1, "2"}}}}})),
                   "config.tokenizer.templates.query.suffix", "token ids");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"detect", {{"prefix", {1, -2}}}}})),
                   "config.tokenizer.templates.detect.prefix");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"point", {{"prefix", {1.5}}}}})),
                   "config.tokenizer.templates.point.prefix");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"point", {{"prefix", {4294967296LL}}}}})),
                   "config.tokenizer.templates.point.prefix");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"point", 3}})),
                   "config.tokenizer.templates.point must be an object");
  EXPECT_ERROR_HAS(parse(with("tokenizer", "templates", {{"point", {{"prefix", {51200}}}}})),
                   "config.tokenizer.templates.point.prefix", "51200");
}

using ConfigFile = TempDir;

TEST_F(ConfigFile, MissingMeansDefaults) { expect_defaults(md::load_model_config(dir_.string())); }

TEST_F(ConfigFile, RemoteCodeNamingStarmieMeansRevision20250621) {
  // The 2025-06-21 snapshot: an empty inner config; only moondream.py tells.
  write("{\"config\": {}}");
  EXPECT_EQ(md::load_model_config(dir_.string()).revision.family, md::TokenizerFamily::kGpt2);
  std::ofstream(dir_ / "moondream.py") << "tokenizer = Tokenizer.from_pretrained(\"moondream/starmie-v1\")\n";
  const md::ModelConfig c = md::load_model_config(dir_.string());
  EXPECT_EQ(c.revision.family, md::TokenizerFamily::kStarmie);
  EXPECT_NE(c.revision.detected_by.find("moondream.py"), std::string::npos) << c.revision.detected_by;
  EXPECT_EQ(c.tokenizer.bos_id, 0);
  // Remote code of an older revision does not name it.
  std::ofstream(dir_ / "moondream.py") << "tokenizer = Tokenizer.from_pretrained(\"vikhyatk/moondream2\")\n";
  EXPECT_EQ(md::load_model_config(dir_.string()).revision.family, md::TokenizerFamily::kGpt2);
}

TEST_F(ConfigFile, ReadsFile) {
  write(json{{"config", tiny_inner()}}.dump(2));
  expect_tiny(md::load_model_config(dir_.string()));
}

TEST_F(ConfigFile, ErrorsNameThePath) {
  const std::string path = (dir_ / "config.json").string();
  write("{\"config\": {\"text\": }");
  EXPECT_ERROR_HAS(md::load_model_config(dir_.string()), path, "invalid JSON", "line 1, column");
  write(R"({"config": {"text": {"dim": "2048"}}})");
  EXPECT_ERROR_HAS(md::load_model_config(dir_.string()), path + ": config.text.dim must be a positive integer");
  // A directory named config.json cannot be read.
  fs::remove(dir_ / "config.json");
  fs::create_directory(dir_ / "config.json");
  EXPECT_ERROR_HAS(md::load_model_config(dir_.string()), path);
}

}  // namespace
