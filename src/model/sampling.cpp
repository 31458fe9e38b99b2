#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace md {

int argmax_token(const float* logits, int n) { return int(std::max_element(logits, logits + n) - logits); }

std::vector<float> top_p_probs(const float* logits, int n, float temperature, float top_p) {
  std::vector<float> p(logits, logits + n);
  const float mx = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (float& v : p) {
    v = std::exp((v - mx) / temperature);
    sum += v;
  }
  for (float& v : p) v = float(v / sum);
  // The kept tokens are a prefix of the order "probability descending, index
  // ascending on ties" (a stable sort of the indices). top_p keeps few of the
  // 51200 tokens, so only the head of that order is sorted — 64 first, four
  // times more while the mass of the head stays within top_p — instead of
  // the whole vocabulary every step (2-3 ms of a ~35 ms step). The same
  // tokens are visited in the same order, so the result is unchanged.
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const auto before = [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
  double cum = 0, kept = 0;
  std::vector<float> out(static_cast<size_t>(n), 0.0f);
  for (size_t head = std::min<size_t>(64, size_t(n)), done = 0;; head = std::min(head * 4, size_t(n))) {
    std::partial_sort(order.begin() + long(done), order.begin() + long(head), order.end(), before);
    bool stopped = false;
    for (size_t i = done; i < head; ++i) {
      const int idx = order[i];
      if (cum > top_p) {  // mass before this token already exceeds top_p
        stopped = true;
        break;
      }
      cum += p[idx];
      out[idx] = p[idx];
      kept += p[idx];
    }
    if (stopped || head == size_t(n)) break;
    done = head;
  }
  for (float& v : out) v = float(v / kept);
  return out;
}

double Sampler::uniform() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * (1.0 / 9007199254740992.0);
}

int Sampler::next(const float* logits, int n) {
  if (p_.temperature <= 0.0f) return argmax_token(logits, n);
  const std::vector<float> probs = top_p_probs(logits, n, p_.temperature, p_.top_p);
  const double u = uniform();
  double cum = 0;
  int last = 0;
  for (int i = 0; i < n; ++i) {
    if (probs[i] <= 0) continue;
    last = i;
    cum += probs[i];
    if (u < cum) return i;
  }
  return last;
}

}  // namespace md
