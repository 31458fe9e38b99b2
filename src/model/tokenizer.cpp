// tokenizer.json: the BPE model and the added vocabulary, around the pipeline
// stages of tokenizer_pipeline.cpp. Encoding follows tokenizers' steps:
//   1. added tokens with normalized=false are cut out of the raw text
//      (leftmost-longest, with single_word / lstrip / rstrip),
//   2. each remaining piece is normalized, then the normalized added tokens
//      are cut out of it,
//   3. the pre-tokenizer splits the pieces, BPE merges each split (lowest
//      merge rank first, leftmost among equals, as tokenizers' word.rs),
//   4. the post-processor adds its special tokens.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "model/tokenizer_pipeline.h"
#include "model/unicode_text.h"
#include "tensor/error.h"

namespace md {
namespace {

using json = nlohmann::json;
using text::next_cp;
using text::prev_cp;

constexpr int64_t kMaxId = 1 << 24;  // refuse absurd ids instead of allocating for them

[[noreturn]] void fail(const std::string& source, const std::string& what) { throw Error(source + ": " + what); }

std::string short_json(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

bool get_bool(const json& obj, const char* key, bool dflt) {
  auto it = obj.find(key);
  return it == obj.end() || !it->is_boolean() ? dflt : it->get<bool>();
}

std::optional<std::string> get_opt_string(const json& obj, const char* key, const std::string& source) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) fail(source, std::string("model.") + key + " must be a string or null");
  return it->get<std::string>();
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;

  // --- BPE model
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::optional<std::string>> vocab_r;                   // id -> vocabulary string
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a,b) -> (rank, merged id)
  std::optional<std::string> unk_token, prefix, suffix;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;

  // --- added vocabulary
  struct Added {
    std::string content;
    std::string pattern;  // what is matched: the content, normalized if `normalized`
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
  };
  std::vector<Added> added;                                   // by insertion, one per id
  std::unordered_map<std::string, int32_t> added_by_content;  // content -> id
  std::unordered_map<int32_t, size_t> added_by_id;            // id -> index in `added`
  std::unordered_set<std::string> special_contents;
  struct Matcher {                                  // leftmost-longest over a set of patterns
    std::array<std::vector<size_t>, 256> by_first;  // indices into `added`, longest first
    bool empty = true;
  };
  Matcher raw_matcher, normalized_matcher;

  // --- truncation and padding of the encoding (tokenizers' post_process)
  struct Truncation {
    size_t max_length = 0;  // of the sequence before the post-processor's tokens
    bool left = false;
  };
  struct Padding {
    size_t fixed = 0;  // 0: BatchLongest (a single sequence: its own length)
    size_t multiple = 0;
    int32_t pad_id = 0;
    bool left = false;
  };
  std::optional<Truncation> truncation;
  std::optional<Padding> padding;
  void parse_truncation(const json& j);
  void parse_padding(const json& j);

  // --- pipeline
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::PostProcessor> post_processor;
  std::unique_ptr<tok::Decoder> decoder;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void parse(const json& root);
  void parse_model(const json& model);
  void parse_added(const json& list);
  void build_matcher(Matcher& m, bool normalized);

  struct Segment {
    std::string text;
    bool at_origin;
    int32_t id;  // -1: text still to tokenize
  };
  void split_added(std::string_view text, bool at_origin, const Matcher& m, std::vector<Segment>& out) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_cached(std::string_view word, std::vector<int32_t>& out) const;
  std::optional<std::string> token_string(int32_t id) const;  // for decoding
};

void Tokenizer::Impl::build_matcher(Matcher& m, bool normalized) {
  for (size_t k = 0; k < added.size(); ++k) {
    if (added[k].normalized != normalized || added[k].pattern.empty()) continue;
    m.by_first[static_cast<unsigned char>(added[k].pattern[0])].push_back(k);
    m.empty = false;
  }
  for (auto& v : m.by_first)
    std::stable_sort(v.begin(), v.end(),
                     [&](size_t a, size_t b) { return added[a].pattern.size() > added[b].pattern.size(); });
}

// tokenizers' AddedVocabulary::find_matches + split, empty pieces dropped.
void Tokenizer::Impl::split_added(std::string_view s, bool at_origin, const Matcher& m,
                                  std::vector<Segment>& out) const {
  auto emit = [&](size_t b, size_t e, int32_t id) {
    if (e > b) out.push_back({std::string(s.substr(b, e - b)), at_origin && b == 0, id});
  };
  if (m.empty) {
    emit(0, s.size(), -1);
    return;
  }
  auto word_at = [&](size_t i) {  // regex ^\w on s[i..]
    size_t len;
    return i < s.size() && text::is_word(next_cp(s, i, &len));
  };
  auto word_before = [&](size_t i) {  // regex \w$ on s[..i]
    size_t len;
    return i > 0 && text::is_word(prev_cp(s, i, &len));
  };
  size_t start_offset = 0, i = 0;
  while (i < s.size()) {
    const Added* hit = nullptr;
    for (size_t k : m.by_first[static_cast<unsigned char>(s[i])]) {
      const std::string& p = added[k].pattern;
      if (p.size() <= s.size() - i && s.compare(i, p.size(), p) == 0) {
        hit = &added[k];
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->pattern.size();
    i = stop;  // the automaton goes on after a match, used or not
    if (hit->single_word && (word_before(start) || word_at(stop))) continue;
    if (hit->lstrip) {
      size_t b = start, len;
      while (b > 0 && text::is_white_space(prev_cp(s, b, &len))) b -= len;
      start = std::max(b, start_offset);
    }
    if (hit->rstrip) {
      size_t len;
      while (stop < s.size() && text::is_white_space(next_cp(s, stop, &len))) stop += len;
    }
    emit(start_offset, start, -1);
    emit(start, stop, hit->id);
    start_offset = stop;
  }
  emit(start_offset, s.size(), -1);
}

// BPE::merge_word + Word::merge_all of one pre-token.
void Tokenizer::Impl::bpe(std::string_view w, std::vector<int32_t>& out) const {
  if (w.empty()) return;
  if (ignore_merges) {
    if (auto it = vocab.find(std::string(w)); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> sym;
  std::optional<int32_t> pending_unk;
  auto unk_id = [&]() -> int32_t {
    auto it = vocab.find(*unk_token);
    if (it == vocab.end()) fail(source, "model.unk_token \"" + *unk_token + "\" is not in model.vocab");
    return it->second;
  };
  for (size_t i = 0; i < w.size();) {
    size_t len;
    next_cp(w, i, &len);
    std::string s(w.substr(i, len));
    const bool first = i == 0;
    i += len;
    if (!first && prefix) s = *prefix + s;
    if (i == w.size() && suffix) s += *suffix;
    if (auto it = vocab.find(s); it != vocab.end()) {
      if (pending_unk) sym.push_back(*pending_unk), pending_unk.reset();
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      std::vector<int32_t> bytes;
      for (unsigned char b : s) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = vocab.find(name);
        if (it == vocab.end()) break;
        bytes.push_back(it->second);
      }
      if (bytes.size() == s.size()) {  // (a pending unk stays pending, as in tokenizers)
        sym.insert(sym.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_token) {
      if (pending_unk && !fuse_unk) sym.push_back(*pending_unk);
      if (!pending_unk || !fuse_unk) pending_unk = unk_id();
    }
  }
  if (pending_unk) sym.push_back(*pending_unk);
  if (sym.empty()) return;

  struct Sym {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Sym> syms(sym.size());
  for (size_t k = 0; k < sym.size(); ++k)
    syms[k] = {sym[k], static_cast<int>(k) - 1, k + 1 < sym.size() ? static_cast<int>(k) + 1 : -1, true};
  if (syms.size() > 1) {
    struct Cand {
      int32_t rank;
      int pos;
      int32_t new_id;
    };
    auto worse = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> q(worse);
    auto consider = [&](int pos) {
      const int nx = syms[pos].next;
      if (nx < 0) return;
      auto it = merges.find(pair_key(syms[pos].id, syms[nx].id));
      if (it != merges.end()) q.push({it->second.first, pos, it->second.second});
    };
    for (int k = 0; k + 1 < static_cast<int>(syms.size()); ++k) consider(k);
    while (!q.empty()) {
      const Cand top = q.top();
      q.pop();
      Sym& cur = syms[top.pos];
      if (!cur.alive || cur.next < 0) continue;
      Sym& right = syms[cur.next];
      auto it = merges.find(pair_key(cur.id, right.id));
      if (it == merges.end() || it->second.second != top.new_id) continue;  // stale entry
      cur.id = top.new_id;
      right.alive = false;
      cur.next = right.next;
      if (cur.next >= 0) syms[cur.next].prev = top.pos;
      if (cur.prev >= 0) consider(cur.prev);
      consider(top.pos);
    }
  }
  for (int k = 0; k >= 0; k = syms[k].next) out.push_back(syms[k].id);
}

void Tokenizer::Impl::bpe_cached(std::string_view word, std::vector<int32_t>& out) const {
  constexpr size_t kMaxCachedWord = 256, kMaxCacheEntries = 100000;
  if (word.size() > kMaxCachedWord) {
    bpe(word, out);
    return;
  }
  std::string key(word);
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (auto it = cache.find(key); it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  bpe(word, out);
  std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
  std::lock_guard<std::mutex> lock(cache_mu);
  if (cache.size() >= kMaxCacheEntries) cache.clear();
  cache.emplace(std::move(key), std::move(ids));
}

std::optional<std::string> Tokenizer::Impl::token_string(int32_t id) const {
  if (auto it = added_by_id.find(id); it != added_by_id.end()) return added[it->second].pattern;
  if (id >= 0 && static_cast<size_t>(id) < vocab_r.size()) return vocab_r[static_cast<size_t>(id)];
  return std::nullopt;
}

void Tokenizer::Impl::parse_model(const json& model) {
  if (!model.is_object()) fail(source, "missing \"model\" object");
  if (auto t = model.find("type"); t != model.end()) {
    if (!t->is_string()) fail(source, "model.type must be a string");
    if (t->get<std::string>() != "BPE") fail(source, "model \"" + t->get<std::string>() + "\" is not supported");
  }
  unk_token = get_opt_string(model, "unk_token", source);
  prefix = get_opt_string(model, "continuing_subword_prefix", source);
  suffix = get_opt_string(model, "end_of_word_suffix", source);
  fuse_unk = get_bool(model, "fuse_unk", false);
  byte_fallback = get_bool(model, "byte_fallback", false);
  ignore_merges = get_bool(model, "ignore_merges", false);

  const auto vit = model.find("vocab");
  if (vit == model.end() || vit->is_null()) fail(source, "missing model.vocab");
  if (!vit->is_object()) fail(source, "model.vocab must be an object {token: id}");
  vocab.reserve(vit->size() * 2);
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer())
      fail(source, "model.vocab: id of " + short_json(it.key()) + " is not an integer");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxId)
      fail(source, "model.vocab: id " + std::to_string(id) + " of " + short_json(it.key()) + " is out of range");
    if (static_cast<size_t>(id) >= vocab_r.size()) vocab_r.resize(static_cast<size_t>(id) + 1);
    auto& slot = vocab_r[static_cast<size_t>(id)];
    if (slot)
      fail(source, "model.vocab: duplicate id " + std::to_string(id) + " (" + short_json(*slot) + " and " +
                       short_json(it.key()) + ")");
    slot = it.key();
    vocab.emplace(it.key(), static_cast<int32_t>(id));
  }
  if (vocab.empty()) fail(source, "model.vocab is empty");

  const auto git = model.find("merges");
  if (git == model.end() || git->is_null()) fail(source, "missing model.merges");
  if (!git->is_array()) fail(source, "model.merges must be an array");
  merges.reserve(git->size() * 2);
  const size_t prefix_len = prefix ? prefix->size() : 0;
  int32_t rank = 0;
  for (const json& m : *git) {
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      if (s.rfind("#version", 0) == 0) continue;
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        fail(source, "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " is not \"<left> <right>\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(source,
           "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    if (b.size() < prefix_len) fail(source, "model.merges: " + short_json(m) + " is shorter than the subword prefix");
    const std::string ab = a + b.substr(prefix_len);
    for (const std::string* name : std::array<const std::string*, 3>{&a, &b, &ab}) {
      if (!vocab.count(*name))
        fail(source, "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " refers to " + short_json(*name) +
                         ", which is not in model.vocab");
    }
    // A repeated pair keeps its last rank (tokenizers collects into a map).
    merges[pair_key(vocab[a], vocab[b])] = {rank, vocab[ab]};
    ++rank;
  }
}

// AddedVocabulary::add_tokens as tokenizer.json deserialization calls it: the
// file's ids are not used; a token takes its vocabulary id, or the next free
// one from the model's vocabulary size on.
void Tokenizer::Impl::parse_added(const json& list) {
  if (list.is_null()) return;
  if (!list.is_array()) fail(source, "added_tokens must be an array");
  int64_t next_id = static_cast<int64_t>(vocab.size());
  for (const json& t : list) {
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string())
      fail(source, "added_tokens entry " + short_json(t) + " needs a string \"content\"");
    for (const char* key : {"single_word", "lstrip", "rstrip", "normalized", "special"}) {
      if (!t.contains(key) || !t[key].is_boolean())
        fail(source, "added_tokens entry " + short_json(t) + " needs a boolean \"" + key + "\"");
    }
    Added a;
    a.content = t["content"].get<std::string>();
    if (a.content.empty()) continue;
    a.special = t["special"].get<bool>();
    a.lstrip = t["lstrip"].get<bool>();
    a.rstrip = t["rstrip"].get<bool>();
    a.single_word = t["single_word"].get<bool>();
    a.normalized = t["normalized"].get<bool>();
    a.pattern = a.normalized && normalizer ? normalizer->normalize(text::lossy_utf8(a.content)) : a.content;
    if (auto it = added_by_content.find(a.content); it != added_by_content.end()) {
      a.id = it->second;
    } else if (auto v = vocab.find(a.content); v != vocab.end()) {
      a.id = v->second;
    } else {
      if (next_id >= kMaxId) fail(source, "added_tokens: too many tokens");
      a.id = static_cast<int32_t>(next_id++);
    }
    if (a.special) special_contents.insert(a.content);
    added_by_content[a.content] = a.id;
    if (auto it = added_by_id.find(a.id); it != added_by_id.end()) {
      added[it->second] = std::move(a);
    } else {
      added_by_id[a.id] = added.size();
      added.push_back(std::move(a));
    }
  }
}

void Tokenizer::Impl::parse_truncation(const json& j) {
  if (j.is_null()) return;
  auto bad = [&](const std::string& what) { fail(source, "truncation " + short_json(j) + ": " + what); };
  if (!j.is_object()) bad("must be an object or null");
  const std::string strategy = j.value("strategy", "LongestFirst");
  if (strategy == "OnlySecond") bad("strategy \"OnlySecond\" is not supported (a prompt is one sequence)");
  if (strategy != "LongestFirst" && strategy != "OnlyFirst") bad("strategy \"" + strategy + "\" is not supported");
  const std::string direction = j.value("direction", "Right");
  if (direction != "Right" && direction != "Left") bad("direction must be Right or Left");
  if (!j.contains("max_length") || !j["max_length"].is_number_unsigned()) bad("needs an integer max_length >= 0");
  const size_t max_length = j["max_length"].get<size_t>();
  const size_t added = post_processor ? size_t(post_processor->added_tokens()) : 0;
  if (max_length < added)
    bad("max_length is below the " + std::to_string(added) + " special tokens the post-processor adds");
  const size_t stride = j.value("stride", size_t(0));
  if (stride > 0 && stride >= max_length - added) bad("stride must be below max_length");
  truncation = Truncation{max_length - added, direction == "Left"};
}

void Tokenizer::Impl::parse_padding(const json& j) {
  if (j.is_null()) return;
  auto bad = [&](const std::string& what) { fail(source, "padding " + short_json(j) + ": " + what); };
  if (!j.is_object()) bad("must be an object or null");
  Padding p;
  const json st = j.value("strategy", json("BatchLongest"));
  if (st.is_object() && st.contains("Fixed") && st["Fixed"].is_number_unsigned())
    p.fixed = st["Fixed"].get<size_t>();
  else if (st != json("BatchLongest"))
    bad("strategy must be \"BatchLongest\" or {\"Fixed\": n}");
  const std::string direction = j.value("direction", "Right");
  if (direction != "Right" && direction != "Left") bad("direction must be Right or Left");
  p.left = direction == "Left";
  if (auto m = j.find("pad_to_multiple_of"); m != j.end() && !m->is_null()) {
    if (!m->is_number_unsigned()) bad("pad_to_multiple_of must be an integer or null");
    p.multiple = m->get<size_t>();
  }
  if (!j.contains("pad_id") || !j["pad_id"].is_number_unsigned()) bad("needs an integer pad_id");
  p.pad_id = j["pad_id"].get<int32_t>();
  padding = p;
}

void Tokenizer::Impl::parse(const json& root) {
  if (!root.is_object()) fail(source, "expected a JSON object at the top level");
  auto section = [&](const char* key) -> const json& {
    static const json null_json;
    auto it = root.find(key);
    return it == root.end() ? null_json : *it;
  };
  normalizer = tok::make_normalizer(section("normalizer"), source);
  pre_tokenizer = tok::make_pre_tokenizer(section("pre_tokenizer"), source);
  post_processor = tok::make_post_processor(section("post_processor"), source);
  decoder = tok::make_decoder(section("decoder"), source);
  parse_model(section("model"));
  parse_added(section("added_tokens"));
  parse_truncation(section("truncation"));
  parse_padding(section("padding"));
  build_matcher(raw_matcher, false);
  build_matcher(normalized_matcher, true);
}

// ------------------------------------------------------------ Tokenizer ----

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, std::string("cannot open tokenizer file (") + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path, "read error");
  return from_json(ss.str(), path);
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    fail(source, std::string("invalid JSON: ") + e.what());
  }
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  try {
    impl->parse(root);
  } catch (const json::exception& e) {  // a field of an unexpected type
    fail(source, std::string("malformed tokenizer: ") + e.what());
  }
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view raw) const {
  if (!impl_) throw Error("tokenizer: not loaded");
  const Impl& im = *impl_;
  const std::string input = text::lossy_utf8(raw);
  std::vector<Impl::Segment> first, second;
  im.split_added(input, true, im.raw_matcher, first);
  for (Impl::Segment& s : first) {
    if (s.id >= 0) {
      second.push_back(std::move(s));
      continue;
    }
    const std::string norm = im.normalizer ? im.normalizer->normalize(std::move(s.text)) : std::move(s.text);
    im.split_added(norm, s.at_origin, im.normalized_matcher, second);
  }
  std::vector<int32_t> out;
  out.reserve(input.size() / 3 + 4);
  std::vector<tok::Piece> pieces;
  for (Impl::Segment& s : second) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    pieces.assign(1, tok::Piece{std::move(s.text), s.at_origin});
    if (im.pre_tokenizer) im.pre_tokenizer->split(pieces);
    for (const tok::Piece& p : pieces) im.bpe_cached(p.text, out);
  }
  // tokenizers' post_process: truncate (leaving room for the special tokens),
  // add them, pad.
  if (im.truncation && out.size() > im.truncation->max_length) {
    const size_t n = im.truncation->max_length;
    if (im.truncation->left)
      out.erase(out.begin(), out.end() - std::ptrdiff_t(n));
    else
      out.resize(n);
  }
  if (im.post_processor) out = im.post_processor->process(std::move(out));
  if (im.padding) {
    size_t len = im.padding->fixed ? im.padding->fixed : out.size();
    if (im.padding->multiple > 0 && len % im.padding->multiple)
      len += im.padding->multiple - len % im.padding->multiple;
    if (out.size() < len) {
      const std::vector<int32_t> pad(len - out.size(), im.padding->pad_id);
      out.insert(im.padding->left ? out.begin() : out.end(), pad.begin(), pad.end());
    }
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  if (!impl_) throw Error("tokenizer: not loaded");
  const Impl& im = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    std::optional<std::string> t = im.token_string(id);
    if (!t || im.special_contents.count(*t)) continue;
    tokens.push_back(std::move(*t));
  }
  std::string out;
  if (im.decoder) {
    for (const std::string& s : im.decoder->decode_chain(std::move(tokens))) out += s;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (!impl_) return std::nullopt;
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (id >= 0 && static_cast<size_t>(id) < impl_->vocab_r.size()) return impl_->vocab_r[static_cast<size_t>(id)];
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (!impl_) return std::nullopt;
  const std::string key(token);
  if (auto it = impl_->added_by_content.find(key); it != impl_->added_by_content.end()) return it->second;
  if (auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  if (!impl_) return false;
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

int Tokenizer::vocab_size() const {
  if (!impl_) return 0;
  int n = static_cast<int>(impl_->vocab_r.size());
  for (const auto& a : impl_->added) n = std::max(n, a.id + 1);
  return n;
}

const std::string& Tokenizer::source() const {
  static const std::string none;
  return impl_ ? impl_->source : none;
}

// ------------------------------------------------------------ TextStreamer ----

std::string TextStreamer::push(int32_t token) {
  tokens_.push_back(token);
  std::string text = tok_->decode(tokens_);
  // A trailing U+FFFD may be a character whose remaining bytes are still to come.
  size_t stable = text.size();
  while (stable >= 3 && text.compare(stable - 3, 3, text::kReplacement) == 0) stable -= 3;
  size_t flush = emitted_bytes_;
  for (size_t i = emitted_bytes_; i < stable;) {
    const char c = text[i];
    if (c == ' ' || c == '\n') {
      flush = ++i;
      continue;
    }
    size_t len;
    const uint32_t cp = next_cp(text, i, &len);
    i += len;
    if (cp != text::kInvalid && text::is_cjk(cp)) flush = i;
  }
  if (flush <= emitted_bytes_) return {};
  std::string out = text.substr(emitted_bytes_, flush - emitted_bytes_);
  emitted_bytes_ = flush;
  return out;
}

std::string TextStreamer::finish() {
  const std::string text = tok_->decode(tokens_);
  std::string out = emitted_bytes_ < text.size() ? text.substr(emitted_bytes_) : std::string();
  emitted_bytes_ = text.size();
  return out;
}

}  // namespace md
