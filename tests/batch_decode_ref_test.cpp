// Batched decoding (TextModel::decode_step): several sequences advanced by
// one position per step with one pass over the weights must give each
// sequence exactly what it gets decoding alone — same greedy tokens, same
// logits bit for bit — whatever its image, prompt length and position, in
// every weight and KV mode, while sequences leave the batch as they finish.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/image.h"
#include "model/moondream.h"
#include "tensor/error.h"
#include "tensor/ops.h"
#include "testdata.h"

namespace md {
namespace {

struct Sequence {
  const KVCache* prefix = nullptr;  // the image prefix it extends; null: a text-only prompt
  std::vector<int> prompt;
  int steps = 0;  // decode steps it stays in the batch
};

struct Trace {
  std::vector<int> tokens;
  std::vector<std::vector<float>> logits;  // after the prompt, then after each step
};

int argmax(const float* v, int n) { return int(std::max_element(v, v + n) - v); }

// A fresh cache for the sequence with its prompt run, and the logits after it.
KVCache start(const Moondream& m, const Sequence& s, std::vector<float>& logits) {
  const int D = m.config().text.dim;
  const int cap = (s.prefix ? s.prefix->length : 0) + int(s.prompt.size()) + s.steps;
  KVCache cache = s.prefix ? KVCache::extending(*s.prefix, cap) : KVCache(m.config().text, cap, m.kv_format());
  if (!s.prefix) cache.prefix = 0;
  std::vector<float> x(s.prompt.size() * size_t(D));
  m.text().embed(s.prompt.data(), int(s.prompt.size()), x.data());
  const auto h = m.text().forward(x.data(), int(s.prompt.size()), cache);
  logits = m.text().logits(h.data() + (s.prompt.size() - 1) * size_t(D));
  return cache;
}

Trace alone(const Moondream& m, const Sequence& s) {
  const int D = m.config().text.dim, V = m.config().text.vocab_size;
  Trace t;
  std::vector<float> logits;
  KVCache cache = start(m, s, logits);
  t.logits.push_back(logits);
  std::vector<float> x(static_cast<size_t>(D));
  for (int k = 0; k < s.steps; ++k) {
    const int next = argmax(logits.data(), V);
    t.tokens.push_back(next);
    m.text().embed(&next, 1, x.data());
    const auto h = m.text().forward(x.data(), 1, cache);
    logits = m.text().logits(h.data());
    t.logits.push_back(logits);
  }
  return t;
}

std::vector<Trace> batched(const Moondream& m, const std::vector<Sequence>& seqs, int* max_batch) {
  const int D = m.config().text.dim, V = m.config().text.vocab_size;
  std::vector<Trace> traces(seqs.size());
  std::vector<KVCache> caches;
  std::vector<std::vector<float>> last(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    caches.push_back(start(m, seqs[i], last[i]));
    traces[i].logits.push_back(last[i]);
  }
  *max_batch = 0;
  for (int k = 0;; ++k) {
    std::vector<size_t> live;
    for (size_t i = 0; i < seqs.size(); ++i)
      if (k < seqs[i].steps) live.push_back(i);
    if (live.empty()) break;
    *max_batch = std::max(*max_batch, int(live.size()));
    std::vector<float> x(live.size() * size_t(D));
    std::vector<KVCache*> step;
    for (size_t j = 0; j < live.size(); ++j) {
      const size_t i = live[j];
      const int next = argmax(last[i].data(), V);
      traces[i].tokens.push_back(next);
      m.text().embed(&next, 1, x.data() + j * size_t(D));
      step.push_back(&caches[i]);
    }
    const uint64_t gemv0 = detail::linear_path_count(LinearPath::Gemv);
    const uint64_t gemm0 = detail::linear_path_count(LinearPath::Int8Gemm) +
                           detail::linear_path_count(LinearPath::Q4Int8Gemm) +
                           detail::linear_path_count(LinearPath::Fp32Gemm);
    // Sequences about one image read its prefix once per step (16-bit and
    // int8 rows; fp32 rows run row by row).
    size_t sharing = 0;
    for (size_t j = 0; j < step.size(); ++j)
      for (size_t i = 0; i < j; ++i)
        if (step[j]->base && step[j]->base == step[i]->base) {
          ++sharing;
          break;
        }
    const uint64_t shared0 = detail::attention_path_count(AttentionPath::SharedBaseRows);
    const auto h = m.text().decode_step(x.data(), step);
    EXPECT_EQ(detail::attention_path_count(AttentionPath::SharedBaseRows) - shared0,
              step.front()->format == KVFormat::F32 ? 0 : sharing * size_t(m.config().text.n_layers));
    const auto logits = m.text().logits_rows(h.data(), int(live.size()));
    // One weight pass for the whole batch: the GEMV kernels, never the
    // prompt GEMMs.
    EXPECT_GT(detail::linear_path_count(LinearPath::Gemv), gemv0);
    EXPECT_EQ(detail::linear_path_count(LinearPath::Int8Gemm) + detail::linear_path_count(LinearPath::Q4Int8Gemm) +
                  detail::linear_path_count(LinearPath::Fp32Gemm),
              gemm0);
    for (size_t j = 0; j < live.size(); ++j) {
      last[live[j]].assign(logits.begin() + long(j * size_t(V)), logits.begin() + long((j + 1) * size_t(V)));
      traces[live[j]].logits.push_back(last[live[j]]);
    }
  }
  return traces;
}

void check_mode(Quantization q, KVFormat kv) {
  LoadOptions o;
  o.quantization = q;
  o.kv_cache = kv;
  const auto m = Moondream::load(testdata::tiny_model().string(), o);
  const auto cases = testdata::cases();
  ASSERT_GE(cases.size(), 2u);
  const EncodedImage a = m->encode_image(load_image_file(cases[0].image.string()));
  const EncodedImage b = m->encode_image(load_image_file(cases[1].image.string()));
  // Five sequences: two images, prompts of different lengths (so different
  // positions in one step), one text-only; they leave after 12, 9, 5, 12
  // and 3 steps.
  auto text = [&](const char* s) {
    const std::vector<int32_t> ids = m->tokenizer().encode(s);
    return std::vector<int>(ids.begin(), ids.end());
  };
  const std::vector<Sequence> seqs = {
      {&a.cache, m->caption_prompt(CaptionLength::Normal), 12},
      {&b.cache, text("What colour is the sky in this picture, and why?"), 9},
      {&a.cache, m->caption_prompt(CaptionLength::Short), 5},
      {&b.cache, m->caption_prompt(CaptionLength::Long), 12},
      {nullptr, text("Hello there"), 3},
  };
  int max_batch = 0;
  const std::vector<Trace> together = batched(*m, seqs, &max_batch);
  EXPECT_EQ(max_batch, int(seqs.size()));
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Trace one = alone(*m, seqs[i]);
    EXPECT_EQ(together[i].tokens, one.tokens) << "sequence " << i;
    ASSERT_EQ(together[i].logits.size(), one.logits.size());
    for (size_t k = 0; k < one.logits.size(); ++k)
      ASSERT_EQ(together[i].logits[k], one.logits[k]) << "sequence " << i << ", step " << k;
  }
}

TEST(BatchDecode, EachSequenceEqualsItsDecodeAloneStoredWeightsF32Kv) { check_mode(Quantization::None, KVFormat::F32); }
TEST(BatchDecode, EachSequenceEqualsItsDecodeAloneStoredWeightsBf16Kv) {
  check_mode(Quantization::None, KVFormat::BF16);
}
TEST(BatchDecode, EachSequenceEqualsItsDecodeAloneInt8) { check_mode(Quantization::Int8, KVFormat::BF16); }
TEST(BatchDecode, EachSequenceEqualsItsDecodeAloneQ4) { check_mode(Quantization::Q4, KVFormat::BF16); }
TEST(BatchDecode, EachSequenceEqualsItsDecodeAloneInt8WithInt8Kv) { check_mode(Quantization::Int8, KVFormat::I8); }

TEST(BatchDecode, RejectsBadBatches) {
  const auto m = Moondream::load(testdata::tiny_model().string());
  const int D = m->config().text.dim;
  KVCache c1(m->config().text, 8, m->kv_format()), c2(m->config().text, 8, m->kv_format());
  c1.prefix = c2.prefix = 0;
  std::vector<float> x(16 * size_t(D), 0.01f);
  EXPECT_THROW(m->text().decode_step(x.data(), {}), Error);
  EXPECT_THROW(m->text().decode_step(x.data(), {&c1, &c1}), Error);
  std::vector<KVCache> many;
  for (int i = 0; i <= TextModel::kMaxBatchRows; ++i) many.emplace_back(m->config().text, 8, m->kv_format());
  std::vector<KVCache*> ptrs;
  for (KVCache& c : many) ptrs.push_back(&c);
  EXPECT_THROW(m->text().decode_step(x.data(), ptrs), Error);
  // A full cache in the batch: an error, and no cache advanced.
  c2.length = c2.capacity;
  EXPECT_THROW(m->text().decode_step(x.data(), {&c1, &c2}), Error);
  EXPECT_EQ(c1.length, 0);
  const auto h = m->text().decode_step(x.data(), {&c1});
  EXPECT_EQ(h.size(), size_t(D));
  EXPECT_EQ(c1.length, 1);
}

}  // namespace
}  // namespace md
