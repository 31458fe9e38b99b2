// GPT-2 byte-level BPE, loaded from a Hugging Face tokenizer.json.
//
// Encoding follows the `tokenizers` library step by step:
//   1. added tokens are cut out of the text first (leftmost-longest match; the
//      tokens with normalized=false first, then the others on what is left),
//   2. every remaining piece goes through the ByteLevel pre-tokenizer: the
//      GPT-2 regex (implemented by hand below with ICU character classes) and
//      the bytes -> printable characters mapping,
//   3. every pre-token is merged with BPE (lowest merge rank first, leftmost
//      first among equal ranks), exactly like tokenizers' word.rs.
#include "model/tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "tensor/error.h"

namespace md {
namespace {

using json = nlohmann::json;

constexpr int32_t kMaxId = 1 << 24;  // refuse absurd ids instead of allocating for them
constexpr uint32_t kInvalidCp = 0xFFFFFFFFu;

// ---------------------------------------------------------------- UTF-8 ----

// Decodes the code point at s[i]; sets *len to its byte length. Invalid or
// truncated sequences decode as kInvalidCp with length 1.
uint32_t next_cp(std::string_view s, size_t i, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  *len = 1;
  if (b0 < 0x80) return b0;
  int n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) { n = 1; cp = b0 & 0x1F; min = 0x80; }
  else if ((b0 & 0xF0) == 0xE0) { n = 2; cp = b0 & 0x0F; min = 0x800; }
  else if ((b0 & 0xF8) == 0xF0) { n = 3; cp = b0 & 0x07; min = 0x10000; }
  else return kInvalidCp;
  if (i + static_cast<size_t>(n) >= s.size()) return kInvalidCp;
  for (int k = 1; k <= n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return kInvalidCp;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidCp;
  *len = static_cast<size_t>(n) + 1;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ------------------------------------------------- GPT-2 byte <-> unicode ----

// bytes_to_unicode() of GPT-2: printable Latin-1 bytes map to themselves, the
// other 68 bytes to U+0100.. in byte order.
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // -1: not a byte-level character
  std::array<std::string, 256> to_utf8;
  ByteMap() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
      append_utf8(to_utf8[b], to_cp[b]);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Byte-level form ("Ġthe") of raw bytes (" the").
std::string to_byte_level(std::string_view raw) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char b : raw) out += m.to_utf8[b];
  return out;
}

// Raw bytes of a byte-level vocabulary string. Like tokenizers' ByteLevel
// decoder, a string with a character outside the mapping stays as it is.
std::string from_byte_level(std::string_view tok) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(tok.size());
  for (size_t i = 0; i < tok.size();) {
    size_t len;
    const uint32_t cp = next_cp(tok, i, &len);
    if (cp >= m.to_byte.size() || m.to_byte[cp] < 0) return std::string(tok);
    out += static_cast<char>(m.to_byte[cp]);
    i += len;
  }
  return out;
}

// ------------------------------------------------ character classes ----

// The classes the GPT-2 regex distinguishes: \p{L}, \p{N}, \s, and the rest.
enum Cls : uint8_t { kOther, kLetter, kNumber, kSpace };

Cls classify(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return kLetter;
    if (cp >= '0' && cp <= '9') return kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
    return kOther;
  }
  if (cp == kInvalidCp) return kOther;
  const auto c = static_cast<UChar32>(cp);
  const uint32_t mask = U_GET_GC_MASK(c);
  if (mask & U_GC_L_MASK) return kLetter;
  if (mask & U_GC_N_MASK) return kNumber;
  // \s of Oniguruma (the engine tokenizers uses) is the White_Space property.
  if (u_isUWhiteSpace(c)) return kSpace;
  return kOther;
}

bool is_word_char(uint32_t cp) {  // for single_word added tokens
  if (cp == kInvalidCp) return false;
  if (cp == '_') return true;
  const auto c = static_cast<UChar32>(cp);
  return u_isUAlphabetic(c) || (U_GET_GC_MASK(c) & U_GC_N_MASK) != 0;
}

bool is_white(uint32_t cp) {
  return cp != kInvalidCp && u_isUWhiteSpace(static_cast<UChar32>(cp));
}

// Code point that ends just before byte `end` (kInvalidCp if none/invalid).
uint32_t prev_cp(std::string_view s, size_t end, size_t* len) {
  size_t start = end;
  while (start > 0 && end - start < 4) {
    --start;
    if ((static_cast<unsigned char>(s[start]) & 0xC0) != 0x80) break;
  }
  if (start == end) {
    *len = 0;
    return kInvalidCp;
  }
  const uint32_t cp = next_cp(s, start, len);
  if (start + *len != end) {
    *len = 1;
    return kInvalidCp;
  }
  return cp;
}

// ------------------------------------------------ GPT-2 pre-tokenizer ----

// Splits `text` like the regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (find_iter: the matches tile the whole text) and calls emit(begin, end)
// with byte offsets for every match.
template <class F>
void pre_tokenize(std::string_view text, F&& emit) {
  struct Ch {
    uint32_t cp;
    uint32_t off;
    Cls cls;
  };
  std::vector<Ch> ch;
  ch.reserve(text.size() + 1);
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const uint32_t cp = next_cp(text, i, &len);
    ch.push_back({cp, static_cast<uint32_t>(i), classify(cp)});
    i += len;
  }
  const size_t n = ch.size();
  ch.push_back({0, static_cast<uint32_t>(text.size()), kOther});  // sentinel for offsets

  size_t i = 0;
  while (i < n) {
    size_t j;  // end (exclusive, in characters) of the match starting at i
    const uint32_t c = ch[i].cp;
    const uint32_t c1 = i + 1 < n ? ch[i + 1].cp : 0;
    const uint32_t c2 = i + 2 < n ? ch[i + 2].cp : 0;
    if (c == '\'' && (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')) {
      j = i + 2;
    } else if (c == '\'' && ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))) {
      j = i + 3;
    } else if (c == ' ' && i + 1 < n && ch[i + 1].cls != kSpace) {
      // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+" with the optional space.
      const Cls k = ch[i + 1].cls;
      j = i + 2;
      while (j < n && ch[j].cls == k) ++j;
    } else if (ch[i].cls != kSpace) {
      const Cls k = ch[i].cls;
      j = i + 1;
      while (j < n && ch[j].cls == k) ++j;
    } else {
      // "\s+(?!\S)": the whole run at the end of the text, otherwise the run
      // minus its last character (which then goes with the next word);
      // "\s+" for a single whitespace character before a non-space.
      size_t e = i + 1;
      while (e < n && ch[e].cls == kSpace) ++e;
      if (e == n || e - i == 1) j = e;
      else j = e - 1;
    }
    emit(static_cast<size_t>(ch[i].off), static_cast<size_t>(ch[j].off));
    i = j;
  }
}

// ------------------------------------------------ JSON helpers ----

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw Error(source + ": " + what);
}

std::string short_json(const json& j) {
  std::string s = j.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

bool get_bool(const json& obj, const char* key, bool dflt) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return dflt;
  return it->is_boolean() ? it->get<bool>() : dflt;
}

}  // namespace

// ------------------------------------------------ Impl ----

struct Tokenizer::Impl {
  std::string source;

  struct Added {
    std::string content;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
  };
  // Leftmost-longest matcher over a set of added tokens.
  struct Matcher {
    std::array<std::vector<int>, 256> by_first;  // indices into `added`, longest first
    bool empty = true;
  };

  std::unordered_map<std::string, int32_t> vocab;  // byte-level form -> id
  std::vector<std::string> id_bytes;               // id -> raw bytes
  std::unordered_map<std::string, int32_t> added_by_content;
  std::array<int32_t, 256> byte_id{};
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a,b) -> (rank, merged id)
  std::vector<Added> added;
  Matcher raw_matcher, normalized_matcher;
  bool add_prefix_space = false;
  bool use_regex = true;
  bool ignore_merges = false;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void build_matcher(Matcher& m, bool normalized) {
    for (size_t k = 0; k < added.size(); ++k) {
      if (added[k].normalized != normalized || added[k].content.empty()) continue;
      m.by_first[static_cast<unsigned char>(added[k].content[0])].push_back(static_cast<int>(k));
      m.empty = false;
    }
    for (auto& v : m.by_first)
      std::stable_sort(v.begin(), v.end(), [&](int a, int b) { return added[a].content.size() > added[b].content.size(); });
  }

  struct Segment {
    size_t begin, end;
    int32_t id;  // -1: plain text
  };

  // tokenizers' AddedVocabulary::find_matches on text[begin, end).
  void split_added(std::string_view text, size_t begin, size_t end, const Matcher& m,
                   std::vector<Segment>& out) const {
    if (m.empty) {
      out.push_back({begin, end, -1});
      return;
    }
    size_t start_offset = begin;  // start of the text not yet emitted
    size_t i = begin;
    while (i < end) {
      const auto& cands = m.by_first[static_cast<unsigned char>(text[i])];
      const Added* hit = nullptr;
      for (int k : cands) {
        const std::string& c = added[k].content;
        if (c.size() <= end - i && text.compare(i, c.size(), c) == 0) {
          hit = &added[k];
          break;
        }
      }
      if (!hit) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + hit->content.size();
      i = stop;
      if (hit->single_word) {
        size_t len;
        const bool word_before = start > begin && is_word_char(prev_cp(text.substr(0, end), start, &len));
        const bool word_after = stop < end && is_word_char(next_cp(text.substr(0, end), stop, &len));
        if (word_before || word_after) continue;
      }
      if (hit->lstrip) {
        size_t s = start, len;
        while (s > start_offset) {
          const uint32_t cp = prev_cp(text.substr(0, end), s, &len);
          if (!is_white(cp)) break;
          s -= len;
        }
        start = s;
      }
      if (hit->rstrip) {
        size_t len;
        while (stop < end && is_white(next_cp(text.substr(0, end), stop, &len))) stop += len;
        i = stop;
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, hit->id});
      start_offset = stop;
    }
    if (start_offset < end) out.push_back({start_offset, end, -1});
  }

  // BPE of one pre-token (raw bytes), appended to out.
  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(to_byte_level(word));
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    struct Sym {
      int32_t id;
      int prev, next;
      bool alive;
    };
    std::vector<Sym> sym;
    sym.reserve(word.size());
    for (unsigned char b : word) {
      const int32_t id = byte_id[b];
      if (id < 0) continue;  // no unk token: unknown characters are dropped
      const int k = static_cast<int>(sym.size());
      sym.push_back({id, k - 1, k + 1, true});
    }
    if (sym.empty()) return;
    sym.back().next = -1;
    if (sym.size() > 1) {
      struct Cand {
        int32_t rank;
        int pos;
        int32_t new_id;
      };
      auto worse = [](const Cand& a, const Cand& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
      std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> q(worse);
      auto consider = [&](int pos) {
        const int nx = sym[pos].next;
        if (nx < 0) return;
        auto it = merges.find(pair_key(sym[pos].id, sym[nx].id));
        if (it != merges.end()) q.push({it->second.first, pos, it->second.second});
      };
      for (int k = 0; k + 1 < static_cast<int>(sym.size()); ++k) consider(k);
      while (!q.empty()) {
        const Cand top = q.top();
        q.pop();
        Sym& cur = sym[top.pos];
        if (!cur.alive || cur.next < 0) continue;
        Sym& right = sym[cur.next];
        auto it = merges.find(pair_key(cur.id, right.id));
        if (it == merges.end() || it->second.second != top.new_id) continue;  // stale entry
        cur.id = top.new_id;
        right.alive = false;
        cur.next = right.next;
        if (cur.next >= 0) sym[cur.next].prev = top.pos;
        if (cur.prev >= 0) consider(cur.prev);
        consider(top.pos);
      }
    }
    for (int k = 0; k >= 0; k = sym[k].next) out.push_back(sym[k].id);
  }

  void bpe_cached(std::string_view word, std::vector<int32_t>& out) const {
    constexpr size_t kMaxCachedWord = 256, kMaxCacheEntries = 100000;
    if (word.size() > kMaxCachedWord) {
      bpe(word, out);
      return;
    }
    std::string key(word);
    {
      std::lock_guard<std::mutex> lock(cache_mu);
      auto it = cache.find(key);
      if (it != cache.end()) {
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

  void encode_plain(std::string_view piece, std::vector<int32_t>& out) const {
    std::string prefixed;
    if (add_prefix_space && (piece.empty() || piece[0] != ' ')) {
      prefixed = " ";
      prefixed += piece;
      piece = prefixed;
    }
    if (!use_regex) {
      if (!piece.empty()) bpe_cached(piece, out);
      return;
    }
    pre_tokenize(piece, [&](size_t b, size_t e) { bpe_cached(piece.substr(b, e - b), out); });
  }

  void set_token(int32_t id, std::string bytes) {
    if (static_cast<size_t>(id) >= id_bytes.size()) id_bytes.resize(static_cast<size_t>(id) + 1);
    id_bytes[static_cast<size_t>(id)] = std::move(bytes);
  }

  void parse(const json& root);
};

void Tokenizer::Impl::parse(const json& root) {
  if (!root.is_object()) fail(source, "expected a JSON object at the top level");

  // normalizer / pre-tokenizer: only what GPT-2 byte-level BPE uses.
  if (auto it = root.find("normalizer"); it != root.end() && !it->is_null())
    fail(source, "normalizer " + short_json(*it) + " is not supported (GPT-2 byte-level BPE has none)");
  if (auto it = root.find("pre_tokenizer"); it != root.end() && !it->is_null()) {
    const json* bl = &*it;
    if (bl->is_object() && bl->value("type", "") == "Sequence") {
      const auto pts = bl->find("pretokenizers");
      if (pts == bl->end() || !pts->is_array() || pts->size() != 1)
        fail(source, "pre_tokenizer " + short_json(*it) + " is not supported (expected ByteLevel)");
      bl = &(*pts)[0];
    }
    if (!bl->is_object() || bl->value("type", "") != "ByteLevel")
      fail(source, "pre_tokenizer " + short_json(*it) + " is not supported (expected ByteLevel)");
    add_prefix_space = get_bool(*bl, "add_prefix_space", false);
    use_regex = get_bool(*bl, "use_regex", true);
  }

  // model
  const auto mit = root.find("model");
  if (mit == root.end() || !mit->is_object()) fail(source, "missing \"model\" object");
  const json& model = *mit;
  if (auto t = model.find("type"); t != model.end()) {
    if (!t->is_string()) fail(source, "model.type must be a string");
    if (t->get<std::string>() != "BPE")
      fail(source, "model type \"" + t->get<std::string>() + "\" is not supported (only BPE)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
      fail(source, std::string("model.") + key + " " + short_json(*it) + " is not supported (GPT-2 BPE uses none)");
  }
  ignore_merges = get_bool(model, "ignore_merges", false);

  const auto vit = model.find("vocab");
  if (vit == model.end() || vit->is_null()) fail(source, "missing model.vocab");
  if (!vit->is_object()) fail(source, "model.vocab must be an object {token: id}");
  vocab.reserve(vit->size() * 2);
  std::vector<const std::string*> by_id;
  for (auto it = vit->begin(); it != vit->end(); ++it) {
    if (!it.value().is_number_integer()) fail(source, "model.vocab: id of " + short_json(it.key()) + " is not an integer");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxId)
      fail(source, "model.vocab: id " + std::to_string(id) + " of " + short_json(it.key()) + " is out of range");
    if (static_cast<size_t>(id) >= by_id.size()) by_id.resize(static_cast<size_t>(id) + 1, nullptr);
    if (by_id[static_cast<size_t>(id)])
      fail(source, "model.vocab: duplicate id " + std::to_string(id) + " (" + short_json(*by_id[static_cast<size_t>(id)]) +
                       " and " + short_json(it.key()) + ")");
    by_id[static_cast<size_t>(id)] = &it.key();
    vocab.emplace(it.key(), static_cast<int32_t>(id));
    set_token(static_cast<int32_t>(id), from_byte_level(it.key()));
  }
  if (vocab.empty()) fail(source, "model.vocab is empty");

  const ByteMap& bm = byte_map();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(bm.to_utf8[b]);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }

  const auto git = model.find("merges");
  if (git == model.end() || git->is_null()) fail(source, "missing model.merges");
  if (!git->is_array()) fail(source, "model.merges must be an array");
  merges.reserve(git->size() * 2);
  int32_t rank = 0;
  for (const json& m : *git) {
    std::string a, b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() || s.find(' ', sp + 1) != std::string::npos)
        fail(source, "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " is not \"<left> <right>\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail(source, "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    const std::string ab = a + b;
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(ab);
    for (const std::string* name : std::array<const std::string*, 3>{&a, &b, &ab}) {
      if (!vocab.count(*name))
        fail(source, "model.merges[" + std::to_string(rank) + "] " + short_json(m) + " refers to " + short_json(*name) +
                         ", which is not in model.vocab");
    }
    // Like tokenizers (a HashMap built in order), a repeated pair keeps its last rank.
    merges[pair_key(ia->second, ib->second)] = {rank, iab->second};
    ++rank;
  }

  // added tokens
  if (auto ait = root.find("added_tokens"); ait != root.end() && !ait->is_null()) {
    if (!ait->is_array()) fail(source, "added_tokens must be an array");
    for (const json& t : *ait) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
          !t["content"].is_string())
        fail(source, "added_tokens entry " + short_json(t) + " needs an integer \"id\" and a string \"content\"");
      const int64_t id = t["id"].get<int64_t>();
      if (id < 0 || id >= kMaxId) fail(source, "added_tokens: id " + std::to_string(id) + " is out of range");
      Added a;
      a.content = t["content"].get<std::string>();
      a.id = static_cast<int32_t>(id);
      a.special = get_bool(t, "special", false);
      a.lstrip = get_bool(t, "lstrip", false);
      a.rstrip = get_bool(t, "rstrip", false);
      a.single_word = get_bool(t, "single_word", false);
      a.normalized = get_bool(t, "normalized", !a.special);
      for (const Added& o : added) {
        if (o.id == a.id && o.content != a.content)
          fail(source, "added_tokens: duplicate id " + std::to_string(id) + " (" + short_json(o.content) + " and " +
                           short_json(a.content) + ")");
      }
      if (a.content.empty()) fail(source, "added_tokens: token " + std::to_string(id) + " has empty content");
      set_token(a.id, a.content);
      added_by_content[a.content] = a.id;
      added.push_back(std::move(a));
    }
  }
  build_matcher(raw_matcher, false);
  build_matcher(normalized_matcher, true);
}

// ------------------------------------------------ Tokenizer ----

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

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (!impl_) throw Error("tokenizer: not loaded");
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  std::vector<Impl::Segment> first, second;
  im.split_added(text, 0, text.size(), im.raw_matcher, first);
  for (const auto& s : first) {
    if (s.id >= 0) second.push_back(s);
    else im.split_added(text, s.begin, s.end, im.normalized_matcher, second);
  }
  for (const auto& s : second) {
    if (s.id >= 0) out.push_back(s.id);
    else im.encode_plain(text.substr(s.begin, s.end - s.begin), out);
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  if (!impl_) throw Error("tokenizer: not loaded");
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<size_t>(id) < impl_->id_bytes.size()) out += impl_->id_bytes[static_cast<size_t>(id)];
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (!impl_ || id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size()) return {};
  return impl_->id_bytes[static_cast<size_t>(id)];
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token) const {
  if (!impl_) return std::nullopt;
  if (auto it = impl_->added_by_content.find(std::string(token)); it != impl_->added_by_content.end())
    return it->second;
  if (auto it = impl_->vocab.find(to_byte_level(token)); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

int Tokenizer::vocab_size() const { return impl_ ? static_cast<int>(impl_->id_bytes.size()) : 0; }

std::vector<std::string_view> detail::gpt2_pre_tokenize(std::string_view text) {
  std::vector<std::string_view> out;
  pre_tokenize(text, [&](size_t b, size_t e) { out.push_back(text.substr(b, e - b)); });
  return out;
}

// ------------------------------------------------ TextStreamer ----

namespace {

// CJK ideographs, kana and CJK/fullwidth punctuation: scripts written without
// spaces between words, so every character is final once complete. (Hangul is
// written with spaces and is not included.)
bool is_cjk(uint32_t cp) {
  return (cp >= 0x3000 && cp <= 0x30FF) ||    // CJK symbols & punctuation, hiragana, katakana
         (cp >= 0x31F0 && cp <= 0x31FF) ||    // katakana phonetic extensions
         (cp >= 0x3400 && cp <= 0x4DBF) ||    // CJK extension A
         (cp >= 0x4E00 && cp <= 0x9FFF) ||    // CJK unified ideographs
         (cp >= 0xF900 && cp <= 0xFAFF) ||    // CJK compatibility ideographs
         (cp >= 0xFF00 && cp <= 0xFFEF) ||    // halfwidth and fullwidth forms
         (cp >= 0x20000 && cp <= 0x2FA1F) ||  // CJK extensions B-F, compatibility supplement
         (cp >= 0x30000 && cp <= 0x323AF);    // CJK extensions G-H
}

}  // namespace

std::string TextStreamer::push(int32_t token) {
  tokens_.push_back(token);
  text_ += tok_->token_bytes(token);
  size_t flush = emitted_bytes_;
  for (size_t i = emitted_bytes_; i < text_.size();) {
    const char c = text_[i];
    if (c == ' ' || c == '\n') {
      flush = ++i;
      continue;
    }
    size_t len;
    const uint32_t cp = next_cp(text_, i, &len);
    i += len;
    if (cp != kInvalidCp && is_cjk(cp)) flush = i;
  }
  std::string out = text_.substr(emitted_bytes_, flush - emitted_bytes_);
  emitted_bytes_ = flush;
  return out;
}

std::string TextStreamer::finish() {
  std::string out = text_.substr(emitted_bytes_);
  emitted_bytes_ = text_.size();
  return out;
}

}  // namespace md
