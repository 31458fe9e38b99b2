#pragma once
// Next-token choice: greedy, or temperature + nucleus (top_p) sampling with a
// seeded generator so a seed reproduces a run.
#include <cstdint>
#include <vector>

namespace md {

struct SamplingParams {
  float temperature = 0.5f;  // 0 → argmax
  float top_p = 0.3f;
  uint64_t seed = 0;
};

int argmax_token(const float* logits, int n);

// Probabilities after softmax(logits/T) and top_p filtering (sorted
// descending, tokens whose preceding cumulative mass exceeds top_p dropped,
// renormalised). Exposed for tests.
std::vector<float> top_p_probs(const float* logits, int n, float temperature, float top_p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), state_(p.seed ^ 0x9E3779B97F4A7C15ull) {}
  int next(const float* logits, int n);
  // Uniform double in [0, 1) from the seeded stream (splitmix64).
  double uniform();

 private:
  SamplingParams p_;
  uint64_t state_;
};

}  // namespace md
