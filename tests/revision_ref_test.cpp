// Revision 2025-06-21 against the independent PyTorch reference, on the tiny
// model in the snapshot's layout with its tokenizer found in a hub cache:
// prompt ids and greedy tokens of caption, query (with spatial references,
// without an image), grounded reasoning (tokens, text, grounding offsets and
// points), detect, point (with a spatial reference) and gaze; and gaze on the
// older revision (the official detect_gaze prompt).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>

#include "model/image.h"
#include "model/tasks.h"
#include "model/unicode_text.h"
#include "server/hub.h"
#include "testdata.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const fs::path kData = MOONDREAM_TESTDATA_DIR;

struct Loaded {
  std::unique_ptr<md::Moondream> model;
  md::EncodedImage image;
  json expected;
};

const Loaded& load(const std::string& model_dir, const std::string& expected) {
  static std::map<std::string, Loaded> all;
  auto it = all.find(model_dir);
  if (it != all.end()) return it->second;
  Loaded l;
  l.expected = md::testdata::read_json(kData / "expected" / expected);
  // The tokenizer as a user's machine finds it: through the hub cache, offline.
  setenv("HF_HUB_CACHE", (kData / "hf-cache").c_str(), 1);
  setenv("HF_HUB_OFFLINE", "1", 1);
  md::LoadOptions lo;
  lo.kv_cache = md::KVFormat::F32;  // the reference holds fp32 rows
  lo.tokenizer_path = md::tokenizer_for_model(model_dir, "", "auto");
  l.model = md::Moondream::load(model_dir, lo);
  const std::string image = l.expected["image"];
  l.image = l.model->encode_image(md::load_image_file((kData / "images" / image).string()));
  return all.emplace(model_dir, std::move(l)).first->second;
}

const Loaded& starmie() { return load((kData / "models" / "tiny-2025-06-21").string(), "revision-2025-06-21.json"); }
const Loaded& older() { return load((kData / "models" / "tiny").string(), "revision-older-gaze.json"); }

md::TaskRequest request(md::TaskKind kind, const Loaded& l, const std::string& text) {
  md::TaskRequest rq;
  rq.kind = kind;
  rq.image = &l.image;
  rq.text = text;
  rq.max_tokens = l.expected["max_tokens"];
  rq.max_objects = 8;
  rq.sampling.temperature = 0;
  return rq;
}

std::vector<int> ints(const json& j) { return j.get<std::vector<int>>(); }

const std::string kQuestion = "What is in this image?";

TEST(Revision20250621, DetectedFromTheRemoteCodeAndTokenizerFromTheHubCache) {
  const Loaded& l = starmie();
  EXPECT_EQ(l.model->revision().name, "2025-06-21");
  EXPECT_NE(l.model->revision().detected_by.find("moondream.py"), std::string::npos);
  EXPECT_NE(l.model->tokenizer_path().find("models--moondream--starmie-v1"), std::string::npos);
  EXPECT_EQ(l.model->tokenizer().vocab_size(), 51200);
  EXPECT_TRUE(l.model->tokenizer().is_special(0));
  // Without the cache entry: one error saying where it looked.
  setenv("HF_HUB_CACHE", "/nonexistent-cache", 1);
  try {
    md::tokenizer_for_model((kData / "models" / "tiny-2025-06-21").string(), "", "auto");
    ADD_FAILURE() << "no error";
  } catch (const md::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("moondream/starmie-v1"), std::string::npos) << m;
    EXPECT_NE(m.find("/nonexistent-cache"), std::string::npos) << m;
  }
  setenv("HF_HUB_CACHE", (kData / "hf-cache").c_str(), 1);
  // And the model refuses to run with its stale GPT-2 file.
  EXPECT_THROW(md::Moondream::load((kData / "models" / "tiny-2025-06-21").string()), md::Error);
}

TEST(Revision20250621, CaptionQuerySpatialTextOnlyMatchTheReference) {
  const Loaded& l = starmie();
  const json& e = l.expected;
  auto check = [&](const char* key, md::TaskRequest rq) {
    const md::TaskResult r = md::run_task(*l.model, rq);
    EXPECT_EQ(r.prompt_ids, ints(e[key]["prompt"])) << key;
    EXPECT_EQ(r.tokens, ints(e[key]["tokens"])) << key;
  };
  check("caption_normal", request(md::TaskKind::kCaption, l, ""));
  check("query", request(md::TaskKind::kQuery, l, kQuestion));
  md::TaskRequest sp = request(md::TaskKind::kQuery, l, kQuestion);
  sp.spatial_refs = {e["point_ref"].get<std::vector<double>>(), e["box_ref"].get<std::vector<double>>()};
  check("query_spatial", sp);
  md::TaskRequest to = request(md::TaskKind::kQuery, l, kQuestion);
  to.image = nullptr;
  check("query_text_only", to);
}

TEST(Revision20250621, GroundedReasoningMatchesTheReference) {
  const Loaded& l = starmie();
  for (const char* key : {"reasoning", "reasoning_text_only"}) {
    const json& e = l.expected[key];
    md::TaskRequest rq = request(md::TaskKind::kQuery, l, kQuestion);
    rq.reasoning = true;
    if (std::string(key) == "reasoning_text_only") rq.image = nullptr;
    bool reasoning_first = false, saw_chunk = false;
    md::TaskCallbacks cb;
    cb.on_reasoning = [&](const md::Reasoning&) { reasoning_first = !saw_chunk; };
    cb.on_chunk = [&](const std::string&) {
      saw_chunk = true;
      return true;
    };
    const md::TaskResult r = md::run_task(*l.model, rq, cb);
    EXPECT_EQ(r.prompt_ids, ints(e["prompt"])) << key;
    ASSERT_TRUE(r.reasoning) << key;
    EXPECT_TRUE(reasoning_first) << key;
    EXPECT_EQ(r.reasoning->tokens, ints(e["reasoning_tokens"])) << key;
    EXPECT_EQ(r.tokens, ints(e["tokens"])) << key;
    // Text and grounding from the reference's chunks (docs/MODEL.md section R4).
    std::string text;
    std::vector<md::GroundingSpan> want;
    int offset = 0;
    for (const json& c : e["chunks"]) {
      const std::string s = l.model->tokenizer().decode(c["ids"].get<std::vector<int32_t>>());
      const int n = int(md::text::count_code_points(s));
      const auto coords = c["coords"].get<std::vector<double>>();
      if (coords.size() >= 2) {
        md::GroundingSpan g{offset, offset + n, {}};
        for (size_t i = 0; i + 1 < coords.size(); i += 2) g.points.push_back({coords[i], coords[i + 1]});
        want.push_back(g);
      }
      text += s;
      offset += n;
    }
    EXPECT_EQ(r.reasoning->text, text) << key;
    ASSERT_EQ(r.reasoning->grounding.size(), want.size()) << key;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(r.reasoning->grounding[i].start_idx, want[i].start_idx) << key;
      EXPECT_EQ(r.reasoning->grounding[i].end_idx, want[i].end_idx) << key;
      ASSERT_EQ(r.reasoning->grounding[i].points.size(), want[i].points.size()) << key;
      for (size_t k = 0; k < want[i].points.size(); ++k) {
        EXPECT_NEAR(r.reasoning->grounding[i].points[k].x, want[i].points[k].x, 1e-6);
        EXPECT_NEAR(r.reasoning->grounding[i].points[k].y, want[i].points[k].y, 1e-6);
      }
    }
    std::printf("  %-20s %zu reasoning tokens, %zu grounded spans, %zu answer tokens\n", key,
                r.reasoning->tokens.size(), want.size(), r.tokens.size());
  }
}

TEST(Revision20250621, DetectPointSpatialRefAndGazeMatchTheReference) {
  const Loaded& l = starmie();
  const json& e = l.expected;
  md::TaskResult d = md::run_task(*l.model, request(md::TaskKind::kDetect, l, "cat"));
  EXPECT_EQ(d.prompt_ids, ints(e["detect"]["prompt"]));
  ASSERT_EQ(d.objects.size(), e["detect"]["objects"].size());
  for (size_t i = 0; i < d.objects.size(); ++i) {
    EXPECT_NEAR(d.objects[i].x_min, e["detect"]["objects"][i]["x_min"].get<double>(), 1e-6);
    EXPECT_NEAR(d.objects[i].y_max, e["detect"]["objects"][i]["y_max"].get<double>(), 1e-6);
  }
  for (const char* key : {"point", "point_spatial"}) {
    md::TaskRequest rq = request(md::TaskKind::kPoint, l, "cat");
    if (std::string(key) == "point_spatial") rq.spatial_refs = {e["point_ref"].get<std::vector<double>>()};
    const md::TaskResult p = md::run_task(*l.model, rq);
    EXPECT_EQ(p.prompt_ids, ints(e[key]["prompt"])) << key;
    ASSERT_EQ(p.points.size(), e[key]["points"].size()) << key;
    for (size_t i = 0; i < p.points.size(); ++i) {
      EXPECT_NEAR(p.points[i].x, e[key]["points"][i]["x"].get<double>(), 1e-6) << key;
      EXPECT_NEAR(p.points[i].y, e[key]["points"][i]["y"].get<double>(), 1e-6) << key;
    }
  }
  md::TaskRequest g = request(md::TaskKind::kGaze, l, "");
  g.eye_x = e["eye"][0];
  g.eye_y = e["eye"][1];
  const md::TaskResult r = md::run_task(*l.model, g);
  EXPECT_EQ(r.prompt_ids, ints(e["gaze"]["prompt"]));
  ASSERT_EQ(r.gaze.has_value(), !e["gaze"]["gaze"].is_null());
  if (r.gaze) {
    EXPECT_NEAR(r.gaze->x, e["gaze"]["gaze"]["x"].get<double>(), 1e-6);
    EXPECT_NEAR(r.gaze->y, e["gaze"]["gaze"]["y"].get<double>(), 1e-6);
  }
}

TEST(RevisionOlder, GazeMatchesTheOfficialDetectGazeReference) {
  const Loaded& l = older();
  EXPECT_EQ(l.model->revision().name, "2025-01-09");
  md::TaskRequest g = request(md::TaskKind::kGaze, l, "");
  g.eye_x = l.expected["eye"][0];
  g.eye_y = l.expected["eye"][1];
  const md::TaskResult r = md::run_task(*l.model, g);
  EXPECT_EQ(r.prompt_ids, ints(l.expected["gaze"]["prompt"]));
  const json& want = l.expected["gaze"]["gaze"];
  ASSERT_EQ(r.gaze.has_value(), !want.is_null());
  if (r.gaze) {
    EXPECT_NEAR(r.gaze->x, want["x"].get<double>(), 1e-6);
    EXPECT_NEAR(r.gaze->y, want["y"].get<double>(), 1e-6);
  }
}

TEST(RevisionOlder, NewSkillsAreAClearUnsupportedError) {
  const Loaded& l = older();
  auto kind_of = [&](md::TaskRequest rq) {
    try {
      md::run_task(*l.model, rq);
    } catch (const md::TaskError& e) {
      EXPECT_NE(std::string(e.what()).find("2025-06-21"), std::string::npos) << e.what();
      return e.kind();
    }
    ADD_FAILURE() << "no error";
    return md::TaskErrorKind::kInvalidRequest;
  };
  md::TaskRequest rq = request(md::TaskKind::kQuery, l, kQuestion);
  rq.reasoning = true;
  EXPECT_EQ(kind_of(rq), md::TaskErrorKind::kUnsupported);
  rq = request(md::TaskKind::kQuery, l, kQuestion);
  rq.spatial_refs = {{0.5, 0.5}};
  EXPECT_EQ(kind_of(rq), md::TaskErrorKind::kUnsupported);
  rq = request(md::TaskKind::kQuery, l, kQuestion);
  rq.image = nullptr;
  EXPECT_EQ(kind_of(rq), md::TaskErrorKind::kUnsupported);
}

TEST(Revision20250621, BadSpatialRefsAreInvalidRequests) {
  const Loaded& l = starmie();
  for (const md::SpatialRef& bad : std::vector<md::SpatialRef>{{0.5},
                                                               {0.1, 0.2, 0.3},
                                                               {1.5, 0.5},
                                                               {-0.1, 0.5},
                                                               {0.6, 0.1, 0.5, 0.9},
                                                               {0.1, 0.9, 0.5, 0.2},
                                                               {std::nan(""), 0.5}}) {
    md::TaskRequest rq = request(md::TaskKind::kQuery, l, kQuestion);
    rq.spatial_refs = {bad};
    try {
      md::run_task(*l.model, rq);
      ADD_FAILURE() << "accepted a bad reference of " << bad.size() << " values";
    } catch (const md::TaskError& e) {
      EXPECT_EQ(e.kind(), md::TaskErrorKind::kInvalidRequest) << e.what();
    }
  }
  md::TaskRequest rq = request(md::TaskKind::kQuery, l, kQuestion);
  rq.image = nullptr;
  rq.spatial_refs = {{0.5, 0.5}};
  EXPECT_THROW(md::run_task(*l.model, rq), md::TaskError);  // references need an image
}

}  // namespace
