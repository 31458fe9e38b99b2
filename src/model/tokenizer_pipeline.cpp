// Normalizers, pre-tokenizers, post-processors and decoders of tokenizer.json,
// each doing what the `tokenizers` library's component of the same name does
// (docs/TOKENIZER.md lists them and the library's behaviour we reproduce).
#include "model/tokenizer_pipeline.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <functional>
#include <nlohmann/json.hpp>

#include "model/unicode_text.h"
#include "tensor/error.h"

namespace md::tok {
namespace {

using json = nlohmann::json;
using text::next_cp;

[[noreturn]] void fail(const std::string& source, const std::string& what) { throw Error(source + ": " + what); }

std::string type_of(const json& j, const std::string& source, const char* section) {
  if (!j.is_object()) fail(source, std::string(section) + " must be an object or null");
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) fail(source, std::string(section) + " has no \"type\"");
  return it->get<std::string>();
}

[[noreturn]] void unsupported(const std::string& source, const char* section, const std::string& type) {
  fail(source, std::string(section) + " \"" + type + "\" is not supported");
}

bool get_bool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  return it == j.end() || !it->is_boolean() ? dflt : it->get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& source, const char* section) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) fail(source, std::string(section) + " needs a string \"" + key + "\"");
  return it->get<std::string>();
}

uint32_t get_char(const json& j, const char* key, const std::string& source, const char* section) {
  const std::string s = get_string(j, key, source, section);
  size_t len = 0;
  const uint32_t cp = s.empty() ? text::kInvalid : next_cp(s, 0, &len);
  if (cp == text::kInvalid || len != s.size())
    fail(source, std::string(section) + " \"" + key + "\" must be one character");
  return cp;
}

// ------------------------------------------------------------ patterns ----

// A match list covering the whole input: (begin, end, is_match).
struct Span {
  size_t begin, end;
  bool match;
};

// SplitPattern: {"String": literal} or {"Regex": pattern}.
class Pattern {
 public:
  Pattern(const json& j, const std::string& source, const char* section) {
    if (j.is_object() && j.size() == 1 && j.contains("String") && j["String"].is_string()) {
      literal_ = j["String"].get<std::string>();
    } else if (j.is_object() && j.size() == 1 && j.contains("Regex") && j["Regex"].is_string()) {
      regex_ = std::make_shared<text::Regex>(j["Regex"].get<std::string>(), source + ": " + section);
    } else {
      fail(source, std::string(section) + " pattern must be {\"String\": ...} or {\"Regex\": ...}");
    }
  }
  explicit Pattern(std::function<bool(uint32_t)> pred) : pred_(std::move(pred)) {}

  std::vector<std::pair<size_t, size_t>> matches(std::string_view s) const {
    if (regex_) return regex_->find_all(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (pred_) {
      for (size_t i = 0; i < s.size();) {
        size_t len;
        const uint32_t cp = next_cp(s, i, &len);
        if (pred_(cp)) out.emplace_back(i, i + len);
        i += len;
      }
      return out;
    }
    if (literal_.empty()) return out;
    for (size_t at = s.find(literal_); at != std::string_view::npos; at = s.find(literal_, at + literal_.size()))
      out.emplace_back(at, at + literal_.size());
    return out;
  }

  // tokenizers' Pattern::find_matches: matches and the gaps between them.
  std::vector<Span> spans(std::string_view s) const {
    if (s.empty()) return {{0, 0, false}};
    std::vector<Span> out;
    size_t prev = 0;
    for (auto [b, e] : matches(s)) {
      if (prev != b) out.push_back({prev, b, false});
      out.push_back({b, e, true});
      prev = e;
    }
    if (prev != s.size()) out.push_back({prev, s.size(), false});
    return out;
  }

 private:
  std::string literal_;
  std::shared_ptr<text::Regex> regex_;
  std::function<bool(uint32_t)> pred_;
};

std::string replace_all(const Pattern& p, std::string_view s, const std::string& content) {
  std::string out;
  size_t prev = 0;
  for (auto [b, e] : p.matches(s)) {
    out.append(s.substr(prev, b - prev));
    out += content;
    prev = e;
  }
  out.append(s.substr(prev));
  return out;
}

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const json& j, const std::string& source) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  fail(source, "pre_tokenizer split behavior " + j.dump() + " is not supported");
}

// NormalizedString::split: the spans merged by the behaviour, empty ones dropped.
std::vector<std::pair<size_t, size_t>> apply_behavior(std::vector<Span> m, Behavior b) {
  std::vector<Span> acc;
  bool prev_match = false;
  switch (b) {
    case Behavior::kIsolated: acc = std::move(m); break;
    case Behavior::kRemoved:
      for (const Span& s : m)
        if (!s.match) acc.push_back(s);
      break;
    case Behavior::kMergedWithPrevious:
      for (const Span& s : m) {
        if (s.match && !prev_match && !acc.empty())
          acc.back().end = s.end;
        else
          acc.push_back({s.begin, s.end, false});
        prev_match = s.match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        if (it->match && !prev_match && !acc.empty())
          acc.back().begin = it->begin;
        else
          acc.push_back({it->begin, it->end, false});
        prev_match = it->match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    case Behavior::kContiguous:
      for (const Span& s : m) {
        if (s.match == prev_match && !acc.empty())
          acc.back().end = s.end;
        else
          acc.push_back({s.begin, s.end, false});
        prev_match = s.match;
      }
      break;
  }
  std::vector<std::pair<size_t, size_t>> out;
  for (const Span& s : acc)
    if (s.end > s.begin) out.emplace_back(s.begin, s.end);
  return out;
}

// PreTokenizedString::split with a per-piece function returning sub-ranges of
// the (possibly rewritten) piece text.
template <class F>
void split_each(std::vector<Piece>& pieces, F&& f) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (Piece& p : pieces) {
    std::string t = std::move(p.text);
    bool origin = p.at_origin;
    for (auto [b, e] : f(t, origin)) {
      if (e > b) out.push_back({t.substr(b, e - b), origin && b == 0});
    }
  }
  pieces = std::move(out);
}

// ------------------------------------------------------------ byte level ----

struct ByteMap {
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 324> to_byte{};  // -1: not a byte-level character
  ByteMap() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[cp] = static_cast<int16_t>(b);
      text::append_utf8(to_utf8[b], cp);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// ------------------------------------------------------------ normalizers ----

struct NormalizerSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  std::string normalize(std::string s) const override {
    for (const auto& n : steps) s = n->normalize(std::move(s));
    return s;
  }
};

struct UnicodeForm : Normalizer {
  text::NormalForm form;
  explicit UnicodeForm(text::NormalForm f) : form(f) {}
  std::string normalize(std::string s) const override { return text::normalize(s, form); }
};

struct Lowercase : Normalizer {
  std::string normalize(std::string s) const override { return text::lowercase(s); }
};

struct Strip : Normalizer {
  bool left, right;
  Strip(bool l, bool r) : left(l), right(r) {}
  std::string normalize(std::string s) const override {
    size_t b = 0, e = s.size(), len;
    if (left)
      while (b < e && text::is_white_space(next_cp(s, b, &len))) b += len;
    if (right)
      while (e > b && text::is_white_space(text::prev_cp(s, e, &len))) e -= len;
    return s.substr(b, e - b);
  }
};

struct StripAccents : Normalizer {
  std::string normalize(std::string s) const override {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      size_t len;
      if (!text::is_mark(next_cp(s, i, &len))) out.append(s, i, len);
      i += len;
    }
    return out;
  }
};

struct ReplaceNormalizer : Normalizer {
  Pattern pattern;
  std::string content;
  ReplaceNormalizer(Pattern p, std::string c) : pattern(std::move(p)), content(std::move(c)) {}
  std::string normalize(std::string s) const override { return replace_all(pattern, s, content); }
};

struct Prepend : Normalizer {
  std::string prefix;
  explicit Prepend(std::string p) : prefix(std::move(p)) {}
  std::string normalize(std::string s) const override { return s.empty() ? s : prefix + s; }
};

struct ByteLevelNormalizer : Normalizer {
  std::string normalize(std::string s) const override { return to_byte_level(s); }
};

// ------------------------------------------------------------ pre-tokenizers ----

struct PreTokenizerSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  void split(std::vector<Piece>& pieces) const override {
    for (const auto& p : steps) p->split(pieces);
  }
};

struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space, use_regex;
  ByteLevelPre(bool a, bool r) : add_prefix_space(a), use_regex(r) {}
  void split(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : pieces) {
      std::string t = std::move(p.text);
      if (add_prefix_space && (t.empty() || t[0] != ' ')) t.insert(t.begin(), ' ');
      if (t.empty()) continue;
      if (!use_regex) {
        out.push_back({to_byte_level(t), p.at_origin});
        continue;
      }
      for (std::string_view w : gpt2_split(t)) out.push_back({to_byte_level(w), p.at_origin && w.data() == t.data()});
    }
    pieces = std::move(out);
  }
};

struct SplitPre : PreTokenizer {
  Pattern pattern;
  Behavior behavior;
  bool invert;
  SplitPre(Pattern p, Behavior b, bool inv) : pattern(std::move(p)), behavior(b), invert(inv) {}
  void split(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](std::string& t, bool) {
      auto spans = pattern.spans(t);
      if (invert)
        for (Span& s : spans) s.match = !s.match;
      return apply_behavior(std::move(spans), behavior);
    });
  }
};

enum class Prepend_ { kAlways, kNever, kFirst };

Prepend_ parse_prepend_scheme(const json& j, const std::string& source, const char* section) {
  Prepend_ scheme = Prepend_::kAlways;
  if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null()) {
    const std::string s = it->is_string() ? it->get<std::string>() : "";
    if (s == "always")
      scheme = Prepend_::kAlways;
    else if (s == "never")
      scheme = Prepend_::kNever;
    else if (s == "first")
      scheme = Prepend_::kFirst;
    else
      fail(source, std::string(section) + " prepend_scheme " + it->dump() + " is not supported");
  }
  if (auto it = j.find("add_prefix_space"); it != j.end() && it->is_boolean() && !it->get<bool>()) {
    if (j.contains("prepend_scheme") && scheme != Prepend_::kNever)
      fail(source, std::string(section) + ": add_prefix_space does not match declared prepend_scheme");
    scheme = Prepend_::kNever;
  }
  return scheme;
}

struct MetaspacePre : PreTokenizer {
  std::string rep;
  Prepend_ scheme;
  bool split_on_rep;
  MetaspacePre(std::string r, Prepend_ s, bool sp) : rep(std::move(r)), scheme(s), split_on_rep(sp) {}
  void split(std::vector<Piece>& pieces) const override {
    Pattern on_rep([c = rep](uint32_t cp) { return text::utf8(cp) == c; });
    split_each(pieces, [&](std::string& t, bool origin) {
      std::string r;
      for (char c : t) {
        if (c == ' ')
          r += rep;
        else
          r += c;
      }
      const bool starts = r.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == Prepend_::kAlways || (scheme == Prepend_::kFirst && origin))) r = rep + r;
      t = std::move(r);
      if (!split_on_rep) return std::vector<std::pair<size_t, size_t>>{{0, t.size()}};
      return apply_behavior(on_rep.spans(t), Behavior::kMergedWithNext);
    });
  }
};

// Splits on a character predicate (WhitespaceSplit, Digits, Punctuation, CharDelimiterSplit).
struct PredicatePre : PreTokenizer {
  Pattern pattern;
  Behavior behavior;
  PredicatePre(std::function<bool(uint32_t)> pred, Behavior b) : pattern(std::move(pred)), behavior(b) {}
  void split(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](std::string& t, bool) { return apply_behavior(pattern.spans(t), behavior); });
  }
};

// Whitespace: keeps the matches of \w+|[^\w\s]+.
struct WhitespacePre : PreTokenizer {
  text::Regex re{"\\w+|[^\\w\\s]+", "Whitespace"};
  void split(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](std::string& t, bool) {
      std::vector<std::pair<size_t, size_t>> out;
      for (auto m : re.find_all(t))
        if (m.second > m.first) out.push_back(m);
      return out;
    });
  }
};

bool is_punctuation(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
           (cp >= 0x7B && cp <= 0x7E);
  return cp != text::kInvalid && (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_P_MASK) != 0;
}

// ------------------------------------------------------------ post-processors ----

struct Template : PostProcessor {
  std::vector<int32_t> prefix, suffix;
  std::vector<int32_t> process(std::vector<int32_t> ids) const override {
    std::vector<int32_t> out = prefix;
    out.insert(out.end(), ids.begin(), ids.end());
    out.insert(out.end(), suffix.begin(), suffix.end());
    return out;
  }
  int added_tokens() const override { return int(prefix.size() + suffix.size()); }
};

struct Identity : PostProcessor {
  std::vector<int32_t> process(std::vector<int32_t> ids) const override { return ids; }
  int added_tokens() const override { return 0; }
};

struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> steps;
  std::vector<int32_t> process(std::vector<int32_t> ids) const override {
    for (const auto& p : steps) ids = p->process(std::move(ids));
    return ids;
  }
  int added_tokens() const override {
    int n = 0;
    for (const auto& p : steps) n += p->added_tokens();
    return n;
  }
};

int32_t token_pair_id(const json& j, const char* key, const std::string& source, const char* type) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[0].is_string() || !(*it)[1].is_number_integer())
    fail(source, std::string("post_processor \"") + type + "\" needs \"" + key + "\": [token, id]");
  return (*it)[1].get<int32_t>();
}

// ------------------------------------------------------------ decoders ----

struct DecoderSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> steps;
  std::vector<std::string> decode_chain(std::vector<std::string> t) const override {
    for (const auto& d : steps) t = d->decode_chain(std::move(t));
    return t;
  }
};

struct ByteLevelDecoder : Decoder {
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) bytes += from_byte_level(t);
    return {text::lossy_utf8(bytes)};
  }
};

struct MetaspaceDecoder : Decoder {
  std::string rep;
  Prepend_ scheme;
  MetaspaceDecoder(std::string r, Prepend_ s) : rep(std::move(r)), scheme(s) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t k = 0; k < t.size();) {
        if (t.compare(k, rep.size(), rep) == 0) {
          if (!(i == 0 && scheme != Prepend_::kNever)) out += ' ';
          k += rep.size();
        } else {
          out += t[k++];
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }
};

struct ReplaceDecoder : Decoder {
  Pattern pattern;
  std::string content;
  ReplaceDecoder(Pattern p, std::string c) : pattern(std::move(p)), content(std::move(c)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) t = replace_all(pattern, t, content);
    return tokens;
  }
};

struct StripDecoder : Decoder {
  uint32_t content;
  size_t start, stop;
  StripDecoder(uint32_t c, size_t a, size_t b) : content(c), start(a), stop(b) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (std::string& t : tokens) {
      std::vector<std::pair<uint32_t, size_t>> chars;  // (code point, byte offset)
      for (size_t i = 0; i < t.size();) {
        size_t len;
        chars.emplace_back(next_cp(t, i, &len), i);
        i += len;
      }
      size_t cut_start = 0, cut_stop = chars.size();
      for (size_t i = 0; i < start && i < chars.size() && chars[i].first == content; ++i) cut_start = i + 1;
      for (size_t i = 0; i < stop && i < chars.size(); ++i) {
        const size_t idx = chars.size() - i - 1;
        if (chars[idx].first != content) break;
        cut_stop = idx;
      }
      if (cut_stop <= cut_start) {
        t.clear();
        continue;
      }
      const size_t b = chars[cut_start].second;
      const size_t e = cut_stop < chars.size() ? chars[cut_stop].second : t.size();
      t = t.substr(b, e - b);
    }
    return tokens;
  }
};

struct FuseDecoder : Decoder {
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    return {all};
  }
};

struct ByteFallbackDecoder : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) {
      return c >= '0' && c <= '9'   ? c - '0'
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                    : -1;
    };
    const int h = hex(t[3]), l = hex(t[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
  }
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (text::valid_utf8(pending))
        out.push_back(pending);
      else
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back(text::kReplacement);
      pending.clear();
    };
    for (std::string& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        pending += static_cast<char>(b);
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    return out;
  }
};

// A "Sequence" component: `key` holds the steps, each parsed by `make`.
template <class Seq, class Make>
std::unique_ptr<Seq> parse_sequence(const json& j, const char* key, const std::string& source, const char* section,
                                    Make make) {
  auto seq = std::make_unique<Seq>();
  auto it = j.find(key);
  if (it == j.end() || !it->is_array())
    fail(source, std::string(section) + " \"Sequence\" needs \"" + key + "\": [...]");
  for (const json& step : *it) {
    if (step.is_null()) fail(source, std::string(section) + " \"Sequence\" contains null");
    seq->steps.push_back(make(step, source));
  }
  return seq;
}

}  // namespace

// ------------------------------------------------------------ public ----

std::string to_byte_level(std::string_view raw) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char b : raw) out += m.to_utf8[b];
  return out;
}

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

std::vector<std::string_view> gpt2_split(std::string_view s) {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  enum Cls : uint8_t { kOther, kLetter, kNumber, kSpace };
  auto classify = [](uint32_t cp) -> Cls {
    if (cp < 0x80) {
      if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return kLetter;
      if (cp >= '0' && cp <= '9') return kNumber;
      if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
      return kOther;
    }
    if (cp == text::kInvalid) return kOther;
    const uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(cp));
    if (mask & U_GC_L_MASK) return kLetter;
    if (mask & U_GC_N_MASK) return kNumber;
    return text::is_white_space(cp) ? kSpace : kOther;
  };
  struct Ch {
    uint32_t cp, off;
    Cls cls;
  };
  std::vector<Ch> ch;
  ch.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    size_t len;
    const uint32_t cp = next_cp(s, i, &len);
    ch.push_back({cp, static_cast<uint32_t>(i), classify(cp)});
    i += len;
  }
  const size_t n = ch.size();
  ch.push_back({0, static_cast<uint32_t>(s.size()), kOther});
  std::vector<std::string_view> out;
  for (size_t i = 0; i < n;) {
    size_t j;
    const uint32_t c = ch[i].cp, c1 = i + 1 < n ? ch[i + 1].cp : 0, c2 = i + 2 < n ? ch[i + 2].cp : 0;
    if (c == '\'' && (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')) {
      j = i + 2;
    } else if (c == '\'' && ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))) {
      j = i + 3;
    } else if (c == ' ' && i + 1 < n && ch[i + 1].cls != kSpace) {
      const Cls k = ch[i + 1].cls;
      for (j = i + 2; j < n && ch[j].cls == k;) ++j;
    } else if (ch[i].cls != kSpace) {
      const Cls k = ch[i].cls;
      for (j = i + 1; j < n && ch[j].cls == k;) ++j;
    } else {
      // \s+(?!\S): a run at the end whole, otherwise minus its last character
      // (which goes with the next word); \s+ for a lone space before a word.
      size_t e = i + 1;
      while (e < n && ch[e].cls == kSpace) ++e;
      j = (e == n || e - i == 1) ? e : e - 1;
    }
    out.push_back(s.substr(ch[i].off, ch[j].off - ch[i].off));
    i = j;
  }
  return out;
}

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string t = type_of(j, source, "normalizer");
  if (t == "Sequence")
    return parse_sequence<NormalizerSequence>(j, "normalizers", source, "normalizer", make_normalizer);
  if (t == "NFC") return std::make_unique<UnicodeForm>(text::NormalForm::kNFC);
  if (t == "NFD") return std::make_unique<UnicodeForm>(text::NormalForm::kNFD);
  if (t == "NFKC") return std::make_unique<UnicodeForm>(text::NormalForm::kNFKC);
  if (t == "NFKD") return std::make_unique<UnicodeForm>(text::NormalForm::kNFKD);
  if (t == "Lowercase") return std::make_unique<Lowercase>();
  if (t == "Strip") return std::make_unique<Strip>(get_bool(j, "strip_left", true), get_bool(j, "strip_right", true));
  if (t == "StripAccents") return std::make_unique<StripAccents>();
  if (t == "Replace") {
    if (!j.contains("pattern")) fail(source, "normalizer \"Replace\" needs a \"pattern\"");
    return std::make_unique<ReplaceNormalizer>(Pattern(j["pattern"], source, "normalizer \"Replace\""),
                                               get_string(j, "content", source, "normalizer \"Replace\""));
  }
  if (t == "Prepend") return std::make_unique<Prepend>(get_string(j, "prepend", source, "normalizer \"Prepend\""));
  if (t == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  unsupported(source, "normalizer", t);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string t = type_of(j, source, "pre_tokenizer");
  if (t == "Sequence")
    return parse_sequence<PreTokenizerSequence>(j, "pretokenizers", source, "pre_tokenizer", make_pre_tokenizer);
  if (t == "ByteLevel")
    return std::make_unique<ByteLevelPre>(get_bool(j, "add_prefix_space", true), get_bool(j, "use_regex", true));
  if (t == "Split") {
    if (!j.contains("pattern")) fail(source, "pre_tokenizer \"Split\" needs a \"pattern\"");
    return std::make_unique<SplitPre>(Pattern(j["pattern"], source, "pre_tokenizer \"Split\""),
                                      parse_behavior(j.value("behavior", json()), source),
                                      get_bool(j, "invert", false));
  }
  if (t == "Metaspace") {
    const uint32_t rep = get_char(j, "replacement", source, "pre_tokenizer \"Metaspace\"");
    return std::make_unique<MetaspacePre>(
        text::utf8(rep), parse_prepend_scheme(j, source, "pre_tokenizer \"Metaspace\""), get_bool(j, "split", true));
  }
  if (t == "Whitespace") return std::make_unique<WhitespacePre>();
  if (t == "WhitespaceSplit") return std::make_unique<PredicatePre>(text::is_white_space, Behavior::kRemoved);
  if (t == "Digits")
    return std::make_unique<PredicatePre>(
        text::is_numeric, get_bool(j, "individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous);
  if (t == "Punctuation")
    return std::make_unique<PredicatePre>(
        is_punctuation, j.contains("behavior") ? parse_behavior(j["behavior"], source) : Behavior::kIsolated);
  if (t == "CharDelimiterSplit") {
    const uint32_t d = get_char(j, "delimiter", source, "pre_tokenizer \"CharDelimiterSplit\"");
    return std::make_unique<PredicatePre>([d](uint32_t cp) { return cp == d; }, Behavior::kRemoved);
  }
  unsupported(source, "pre_tokenizer", t);
}

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string t = type_of(j, source, "post_processor");
  if (t == "ByteLevel") return std::make_unique<Identity>();
  if (t == "Sequence")
    return parse_sequence<PostSequence>(j, "processors", source, "post_processor", make_post_processor);
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto tp = std::make_unique<Template>();
    tp->prefix = {token_pair_id(j, "cls", source, t.c_str())};
    tp->suffix = {token_pair_id(j, "sep", source, t.c_str())};
    return tp;
  }
  if (t == "TemplateProcessing") {
    auto tp = std::make_unique<Template>();
    auto single = j.find("single");
    auto specials = j.find("special_tokens");
    if (single == j.end() || !single->is_array())
      fail(source, "post_processor \"TemplateProcessing\" needs \"single\": [...]");
    bool seen_sequence = false;
    for (const json& piece : *single) {
      if (piece.is_object() && piece.contains("Sequence")) {
        const json& s = piece["Sequence"];
        if (!s.is_object() || s.value("id", "") != "A")
          fail(source, "post_processor \"TemplateProcessing\": single template sequence " + s.dump() +
                           " is not supported (only \"A\")");
        if (seen_sequence) fail(source, "post_processor \"TemplateProcessing\": \"A\" appears twice in single");
        seen_sequence = true;
      } else if (piece.is_object() && piece.contains("SpecialToken")) {
        const std::string name = piece["SpecialToken"].value("id", "");
        if (specials == j.end() || !specials->is_object() || !specials->contains(name) ||
            !(*specials)[name].contains("ids") || !(*specials)[name]["ids"].is_array())
          fail(source,
               "post_processor \"TemplateProcessing\": special token \"" + name + "\" is missing from special_tokens");
        auto& dst = seen_sequence ? tp->suffix : tp->prefix;
        for (const json& id : (*specials)[name]["ids"]) {
          if (!id.is_number_integer()) fail(source, "post_processor \"TemplateProcessing\": ids must be integers");
          dst.push_back(id.get<int32_t>());
        }
      } else {
        fail(source, "post_processor \"TemplateProcessing\": bad template piece " + piece.dump());
      }
    }
    if (!seen_sequence) fail(source, "post_processor \"TemplateProcessing\": single template has no \"A\"");
    return tp;
  }
  unsupported(source, "post_processor", t);
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string t = type_of(j, source, "decoder");
  if (t == "Sequence") return parse_sequence<DecoderSequence>(j, "decoders", source, "decoder", make_decoder);
  if (t == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (t == "Metaspace") {
    const uint32_t rep = get_char(j, "replacement", source, "decoder \"Metaspace\"");
    return std::make_unique<MetaspaceDecoder>(text::utf8(rep),
                                              parse_prepend_scheme(j, source, "decoder \"Metaspace\""));
  }
  if (t == "Replace") {
    if (!j.contains("pattern")) fail(source, "decoder \"Replace\" needs a \"pattern\"");
    return std::make_unique<ReplaceDecoder>(Pattern(j["pattern"], source, "decoder \"Replace\""),
                                            get_string(j, "content", source, "decoder \"Replace\""));
  }
  if (t == "Strip") {
    const uint32_t c = get_char(j, "content", source, "decoder \"Strip\"");
    auto count = [&](const char* k) {
      auto it = j.find(k);
      if (it == j.end() || !it->is_number_unsigned())
        fail(source, std::string("decoder \"Strip\" needs \"") + k + "\" >= 0");
      return it->get<size_t>();
    };
    return std::make_unique<StripDecoder>(c, count("start"), count("stop"));
  }
  if (t == "Fuse") return std::make_unique<FuseDecoder>();
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  unsupported(source, "decoder", t);
}

}  // namespace md::tok
