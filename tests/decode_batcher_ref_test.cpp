// Tasks run together through one DecodeBatcher: eight mixed requests (captions,
// questions with and without an image, grounded reasoning, detect, point,
// gaze) on eight threads, with an image encoded in the middle, must each give
// exactly what they give alone — tokens, text, reasoning, boxes and points —
// while their decode steps really ran in shared batches.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "model/decode_batcher.h"
#include "model/image.h"
#include "model/moondream.h"
#include "model/tasks.h"
#include "model/tokenizer.h"
#include "testdata.h"

namespace md {
namespace {

struct Fixture {
  std::unique_ptr<Moondream> model;
  EncodedImage a, b;
  RgbImage pixels_c;
};

Fixture load(Quantization q) {
  const std::string dir = (testdata::root() / "models" / "tiny-2025-06-21").string();
  LoadOptions o;
  o.quantization = q;
  // Its tokenizer, as the hub cache holds it (the revision's own repo).
  for (const auto& e : std::filesystem::recursive_directory_iterator(testdata::root() / "hf-cache"))
    if (e.path().filename() == "tokenizer.json" && e.path().string().find("starmie") != std::string::npos)
      o.tokenizer_path = e.path().string();
  Fixture f;
  f.model = Moondream::load(dir, o);
  const auto cases = testdata::cases();
  EXPECT_GE(cases.size(), 3u);
  f.a = f.model->encode_image(load_image_file(cases[0].image.string()));
  f.b = f.model->encode_image(load_image_file(cases[1].image.string()));
  f.pixels_c = load_image_file(cases[2].image.string());
  return f;
}

std::vector<TaskRequest> mixed_requests(const Fixture& f, const EncodedImage* c) {
  auto rq = [](TaskKind k, const EncodedImage* img, const std::string& text, int max_tokens) {
    TaskRequest r;
    r.kind = k;
    r.image = img;
    r.text = text;
    r.max_tokens = max_tokens;
    r.max_objects = 6;
    r.sampling.temperature = 0;
    return r;
  };
  std::vector<TaskRequest> out;
  out.push_back(rq(TaskKind::kCaption, &f.a, "", 24));
  TaskRequest shortcap = rq(TaskKind::kCaption, &f.b, "", 9);
  shortcap.length = CaptionLength::Short;
  out.push_back(shortcap);
  out.push_back(rq(TaskKind::kQuery, &f.b, "What colour is the sky in this picture?", 17));
  TaskRequest reason = rq(TaskKind::kQuery, &f.a, "How many animals are there?", 12);
  reason.reasoning = true;
  out.push_back(reason);
  out.push_back(rq(TaskKind::kQuery, nullptr, "Write a haiku about the sea.", 20));
  out.push_back(rq(TaskKind::kDetect, &f.a, "dog", 0));
  TaskRequest point = rq(TaskKind::kPoint, &f.b, "window", 0);
  point.spatial_refs = {{0.2, 0.3, 0.6, 0.7}};
  out.push_back(point);
  TaskRequest gaze = rq(TaskKind::kGaze, c, "", 0);
  gaze.eye_x = 0.4;
  gaze.eye_y = 0.35;
  out.push_back(gaze);
  return out;
}

void expect_same(const TaskResult& together, const TaskResult& one, size_t i) {
  EXPECT_EQ(together.tokens, one.tokens) << "request " << i;
  EXPECT_EQ(together.text, one.text) << "request " << i;
  EXPECT_EQ(together.finish_reason, one.finish_reason) << "request " << i;
  EXPECT_EQ(together.reasoning.has_value(), one.reasoning.has_value()) << "request " << i;
  if (together.reasoning && one.reasoning) {
    EXPECT_EQ(together.reasoning->tokens, one.reasoning->tokens) << "request " << i;
    EXPECT_EQ(reasoning_json(*together.reasoning), reasoning_json(*one.reasoning)) << "request " << i;
  }
  ASSERT_EQ(together.objects.size(), one.objects.size()) << "request " << i;
  for (size_t k = 0; k < one.objects.size(); ++k) {
    EXPECT_EQ(together.objects[k].x_min, one.objects[k].x_min) << "request " << i;
    EXPECT_EQ(together.objects[k].y_max, one.objects[k].y_max) << "request " << i;
  }
  ASSERT_EQ(together.points.size(), one.points.size()) << "request " << i;
  for (size_t k = 0; k < one.points.size(); ++k) {
    EXPECT_EQ(together.points[k].x, one.points[k].x) << "request " << i;
    EXPECT_EQ(together.points[k].y, one.points[k].y) << "request " << i;
  }
  ASSERT_EQ(together.gaze.has_value(), one.gaze.has_value()) << "request " << i;
  if (one.gaze) {
    EXPECT_EQ(together.gaze->x, one.gaze->x) << "request " << i;
  }
}

void check_mode(Quantization q) {
  const Fixture f = load(q);
  const EncodedImage c_alone = f.model->encode_image(f.pixels_c);
  const std::vector<TaskRequest> alone_rqs = mixed_requests(f, &c_alone);
  std::vector<TaskResult> alone;
  for (const TaskRequest& r : alone_rqs) alone.push_back(run_task(*f.model, r));
  // Every decode loop takes more than one step (batches can form).
  for (size_t i = 0; i < alone.size(); ++i) EXPECT_GT(alone[i].timings.decode_tokens, 1) << "request " << i;

  DecodeBatcher batcher(f.model->text(), TextModel::kMaxBatchRows);
  std::vector<TaskResult> together(alone_rqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < alone_rqs.size(); ++i) {
    threads.emplace_back([&, i] {
      TaskRequest r = alone_rqs[i];
      EncodedImage c;
      if (r.kind == TaskKind::kGaze) {
        // This one's image is encoded through the batcher while the others decode.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        batcher.run([&] { c = f.model->encode_image(f.pixels_c); });
        r.image = &c;
      }
      together[i] = run_task(*f.model, r, {}, &batcher);
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < alone.size(); ++i) expect_same(together[i], alone[i], i);

  const DecodeBatcher::Stats s = batcher.stats();
  uint64_t steps = 0, rows = 0, shared = 0;
  for (size_t n = 0; n < s.steps_of_size.size(); ++n) {
    steps += s.steps_of_size[n];
    rows += s.steps_of_size[n] * n;
    if (n >= 2) shared += s.steps_of_size[n];
  }
  EXPECT_EQ(steps, s.steps);
  EXPECT_EQ(rows, s.rows);
  uint64_t decode_steps = 0;
  for (const TaskResult& r : alone) decode_steps += uint64_t(r.timings.decode_tokens);
  // Every step of every loop went through the batcher (a token's step per
  // generated token but the last of each answer; region steps one each) ...
  EXPECT_GE(s.rows, decode_steps - 2 * alone.size());
  // ... most of them shared with other tasks.
  EXPECT_GT(shared, 0u);
  EXPECT_LT(s.steps, s.rows / 2) << "steps should have averaged more than two rows";
  EXPECT_EQ(s.seated, 0);
  EXPECT_GE(s.works, alone.size());  // every prompt (and the encoding) ran on the compute thread
}

TEST(DecodeBatcher, MixedTasksTogetherEqualEachAloneStoredWeights) { check_mode(Quantization::None); }
TEST(DecodeBatcher, MixedTasksTogetherEqualEachAloneInt8) { check_mode(Quantization::Int8); }

// A long computation on the compute thread lets a ready step run between its
// layers (the prefill-between-steps guarantee), and only then.
TEST(DecodeBatcher, AStepRunsBetweenTheLayersOfAnEncoding) {
  const Fixture f = load(Quantization::None);
  DecodeBatcher batcher(f.model->text(), 4);
  const int D = f.model->config().text.dim, V = f.model->config().text.vocab_size;
  KVCache cache = KVCache::extending(f.a.cache, f.a.cache.length + 4);
  std::vector<float> x(static_cast<size_t>(D), 0.02f), h(static_cast<size_t>(D)), logits(static_cast<size_t>(V));
  std::atomic<bool> stepped{false}, working{false};
  std::thread seq([&] {
    // Handed in once the compute thread is inside the work below.
    while (!working) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    DecodeSeat seat(batcher);
    batcher.step(x.data(), cache, h.data(), logits.data());
    stepped = true;
  });
  bool stepped_inside = false;
  batcher.run([&] {
    // Wait (on the compute thread) until the step is handed in, then encode:
    // the step must run at the encoder's first layer boundary.
    working = true;
    for (int i = 0; i < 2000 && batcher.stats().pending == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_FALSE(stepped.load());
    // Past the work's minimum slice: the first layer boundary yields.
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    EXPECT_FALSE(stepped.load());
    (void)f.model->encode_image(f.pixels_c);
    stepped_inside = stepped.load();
  });
  seq.join();
  EXPECT_TRUE(stepped_inside);
  const DecodeBatcher::Stats s = batcher.stats();
  EXPECT_EQ(s.steps, 1u);
  EXPECT_EQ(s.yields, 1u);
  // And the step's result is the one a forward of that position gives.
  KVCache ref = KVCache::extending(f.a.cache, f.a.cache.length + 4);
  const PooledVector<float> want = f.model->text().forward(x.data(), 1, ref);
  EXPECT_EQ(std::vector<float>(want.begin(), want.end()), h);
  EXPECT_EQ(f.model->text().logits(want.data()), logits);
}

// Errors reach the task that caused them; the batcher keeps serving.
TEST(DecodeBatcher, AFailingWorkRethrowsAndTheBatcherGoesOn) {
  const Fixture f = load(Quantization::None);
  DecodeBatcher batcher(f.model->text(), 2);
  EXPECT_THROW(batcher.run([] { throw Error("boom"); }), Error);
  int ran = 0;
  batcher.run([&] { ++ran; });
  EXPECT_EQ(ran, 1);
  TaskRequest r;
  r.kind = TaskKind::kCaption;
  r.image = &f.a;
  r.max_tokens = 5;
  r.sampling.temperature = 0;
  EXPECT_EQ(run_task(*f.model, r, {}, &batcher).tokens, run_task(*f.model, r).tokens);
}

}  // namespace
}  // namespace md
