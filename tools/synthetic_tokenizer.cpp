#include "synthetic_tokenizer.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "model/tokenizer_pipeline.h"
#include "model/unicode_text.h"
#include "tensor/error.h"

namespace md::synth {
namespace {

using json = nlohmann::ordered_json;
const std::string kMeta = "\xE2\x96\x81";  // U+2581, sentencepiece's space

std::vector<std::string> chars_of(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    text::next_cp(s, i, &len);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

std::string replace_spaces(const std::string& s, const std::string& with) {
  std::string out;
  for (char c : s) {
    if (c == ' ')
      out += with;
    else
      out += c;
  }
  return out;
}

// Greedy BPE: merge the most frequent adjacent pair (ties: the smallest pair)
// until `n` merges or no pair occurs twice. Merged token = a + b[prefix_len:].
struct Trainer {
  std::vector<std::vector<std::string>> words;
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> merged_tokens;

  void train(int n, size_t prefix_len) {
    std::set<std::string> seen;
    for (int it = 0; it < n; ++it) {
      std::map<std::pair<std::string, std::string>, int> counts;
      for (const auto& w : words)
        for (size_t k = 0; k + 1 < w.size(); ++k) ++counts[{w[k], w[k + 1]}];
      const std::pair<std::string, std::string>* best = nullptr;
      int best_count = 1;
      for (const auto& [pair, c] : counts) {
        if (c > best_count) best = &pair, best_count = c;
      }
      if (!best) break;
      const auto [a, b] = *best;
      const std::string merged = a + b.substr(std::min(prefix_len, b.size()));
      for (auto& w : words) {
        std::vector<std::string> out;
        for (size_t k = 0; k < w.size(); ++k) {
          if (k + 1 < w.size() && w[k] == a && w[k + 1] == b) {
            out.push_back(merged);
            ++k;
          } else {
            out.push_back(w[k]);
          }
        }
        w = std::move(out);
      }
      merges.emplace_back(a, b);
      if (seen.insert(merged).second) merged_tokens.push_back(merged);
    }
  }
};

// Vocabulary in id order, without duplicates.
struct Vocab {
  std::vector<std::string> tokens;
  std::set<std::string> have;
  void add(const std::string& t) {
    if (have.insert(t).second) tokens.push_back(t);
  }
  json to_json() const {
    json v = json::object();
    for (size_t i = 0; i < tokens.size(); ++i) v[tokens[i]] = static_cast<int>(i);
    return v;
  }
};

json added(int id, const std::string& content, bool special, bool normalized, bool lstrip = false, bool rstrip = false,
           bool single_word = false) {
  return json{{"id", id},         {"content", content},       {"single_word", single_word}, {"lstrip", lstrip},
              {"rstrip", rstrip}, {"normalized", normalized}, {"special", special}};
}

json model(const Vocab& v, const Trainer& t, json unk, json prefix, json suffix, bool fuse_unk, bool byte_fallback,
           bool ignore_merges) {
  json merges = json::array();
  for (const auto& [a, b] : t.merges) merges.push_back(json::array({a, b}));
  return json{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", unk},
              {"continuing_subword_prefix", prefix},
              {"end_of_word_suffix", suffix},
              {"fuse_unk", fuse_unk},
              {"byte_fallback", byte_fallback},
              {"ignore_merges", ignore_merges},
              {"vocab", v.to_json()},
              {"merges", merges}};
}

json byte_level(bool add_prefix_space, bool use_regex) {
  return {
      {"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json string_pattern(const std::string& s) { return {{"String", s}}; }

json templ(const std::vector<std::string>& before, const std::vector<std::string>& after,
           const std::map<std::string, int>& ids) {
  json single = json::array(), pair = json::array(), specials = json::object();
  auto special = [](const std::string& name, int type_id) {
    return json{{"SpecialToken", {{"id", name}, {"type_id", type_id}}}};
  };
  for (const auto& s : before) single.push_back(special(s, 0)), pair.push_back(special(s, 0));
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  pair.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  for (const auto& s : after) single.push_back(special(s, 0)), pair.push_back(special(s, 0));
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  for (const auto& [name, id] : ids) specials[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}

json file(json added_tokens, json normalizer, json pre, json post, json decoder, json model_json) {
  return json{
      {"version", "1.0"},         {"truncation", nullptr}, {"padding", nullptr},     {"added_tokens", added_tokens},
      {"normalizer", normalizer}, {"pre_tokenizer", pre},  {"post_processor", post}, {"decoder", decoder},
      {"model", model_json}};
}

std::vector<std::string> byte_chars() {
  std::vector<std::string> out;
  for (int b = 0; b < 256; ++b) out.push_back(tok::to_byte_level(std::string(1, static_cast<char>(b))));
  return out;
}

std::string superword(int n, int vocab_size) {
  const std::string split = "\\p{N}{1,3}|[.,!?;:]+|\\n+";
  const text::Regex re(split, "superword split");
  Trainer t;
  for (const std::string& s : training_texts()) {
    size_t prev = 0;
    auto add = [&](size_t b, size_t e) {
      if (e > b) t.words.push_back(chars_of(tok::to_byte_level(s.substr(b, e - b))));
    };
    for (auto [b, e] : re.find_all(s)) add(prev, b), add(b, e), prev = e;
    add(prev, s.size());
  }
  t.train(n, 0);
  Vocab v;
  json added_tokens = json::array();
  for (int id = 0; id <= 20; ++id) {
    const std::string name = id == 0 ? "<|endoftext|>" : "<|md_reserved_" + std::to_string(id - 1) + "|>";
    v.add(name);
    added_tokens.push_back(added(id, name, true, false));
  }
  for (const auto& c : byte_chars()) v.add(c);
  for (const auto& m : t.merged_tokens) v.add(m);
  for (int k = 0; static_cast<int>(v.tokens.size()) < vocab_size; ++k) v.add("\xC4\xA0tok" + std::to_string(k));
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}, {"invert", false}},
                byte_level(false, false)}}};
  return file(added_tokens, nullptr, pre, byte_level(true, true), byte_level(true, true),
              model(v, t, nullptr, nullptr, nullptr, false, false, true))
      .dump(1);
}

std::string sentencepiece(int n, bool metaspace) {
  Trainer t;
  std::vector<std::string> seen_chars;
  std::set<std::string> have;
  for (const std::string& s : training_texts()) {
    const std::string r = kMeta + replace_spaces(s, kMeta);
    std::vector<std::string> cs = chars_of(r);
    for (const auto& c : cs)
      if (have.insert(c).second) seen_chars.push_back(c);
    if (!metaspace) {
      t.words.push_back(cs);
      continue;
    }
    std::vector<std::string> w;
    for (const auto& c : cs) {
      if (c == kMeta && !w.empty()) t.words.push_back(w), w.clear();
      w.push_back(c);
    }
    if (!w.empty()) t.words.push_back(w);
  }
  t.train(n, 0);
  Vocab v;
  for (const char* s : {"<unk>", "<s>", "</s>"}) v.add(s);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    v.add(name);
  }
  for (const auto& c : seen_chars) v.add(c);
  for (const auto& m : t.merged_tokens) v.add(m);
  json added_tokens = {added(0, "<unk>", true, false), added(1, "<s>", true, false), added(2, "</s>", true, false)};
  if (!metaspace) {
    // A normalized, non-special token: matched in the normalized text ("▁"-prefixed form).
    added_tokens.push_back(added(static_cast<int>(v.tokens.size()), "<image>", false, true));
    json normalizer = {{"type", "Sequence"},
                       {"normalizers",
                        {{{"type", "Prepend"}, {"prepend", kMeta}},
                         {{"type", "Replace"}, {"pattern", string_pattern(" ")}, {"content", kMeta}}}}};
    json decoder = {{"type", "Sequence"},
                    {"decoders",
                     {{{"type", "Replace"}, {"pattern", string_pattern(kMeta)}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
    return file(added_tokens, normalizer, nullptr, templ({"<s>"}, {}, {{"<s>", 1}}), decoder,
                model(v, t, "<unk>", nullptr, nullptr, false, true, false))
        .dump(1);
  }
  added_tokens.push_back(added(static_cast<int>(v.tokens.size()), "<sep>", true, false, false, true));
  json ms = {{"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "first"}, {"split", true}};
  json decoder = {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, ms}}};
  return file(added_tokens, nullptr, ms, templ({"<s>"}, {"</s>"}, {{"<s>", 1}, {"</s>", 2}}), decoder,
              model(v, t, "<unk>", nullptr, nullptr, true, true, false))
      .dump(1);
}

std::string added_tokens_flavour(int n) {
  Trainer t;
  for (const std::string& s : training_texts()) {
    const std::string text = " " + s;  // (gpt2_split returns views into it)
    for (std::string_view w : tok::gpt2_split(text)) t.words.push_back(chars_of(tok::to_byte_level(w)));
  }
  t.train(n, 0);
  Vocab v;
  v.add("<|endoftext|>");
  for (const auto& c : byte_chars()) v.add(c);
  for (const auto& m : t.merged_tokens) v.add(m);
  int next = static_cast<int>(v.tokens.size());
  json added_tokens = {added(0, "<|endoftext|>", true, false),
                       added(next++, "<mask>", true, false, /*lstrip=*/true),
                       added(next++, "[SEP]", true, false, false, /*rstrip=*/true),
                       added(next++, "<img>", false, false, true, true),
                       added(next++, "word", false, true, false, false, /*single_word=*/true),
                       added(next++, "  ", false, true),
                       added(next++, "ing", false, true)};
  return file(added_tokens, nullptr, byte_level(true, true), byte_level(true, true), byte_level(true, true),
              model(v, t, nullptr, nullptr, nullptr, false, false, false))
      .dump(1);
}

std::string normalized_flavour(int n) {
  const std::string prefix = "##", suffix = "</w>";
  Trainer t;
  std::vector<std::string> seen;
  std::set<std::string> have;
  for (const std::string& s : training_texts()) {
    std::string norm = text::normalize(text::lossy_utf8(s), text::NormalForm::kNFKD);
    std::string no_marks;
    for (const auto& c : chars_of(norm)) {
      size_t len;
      if (!text::is_mark(text::next_cp(c, 0, &len))) no_marks += c;
    }
    norm = text::lowercase(no_marks);
    std::vector<std::string> word;
    auto flush = [&] {
      if (word.empty()) return;
      std::vector<std::string> w;
      for (size_t k = 0; k < word.size(); ++k) {
        std::string c = (k ? prefix : "") + word[k] + (k + 1 == word.size() ? suffix : "");
        w.push_back(c);
      }
      t.words.push_back(w);
      word.clear();
    };
    for (const auto& c : chars_of(norm)) {
      size_t len;
      const uint32_t cp = text::next_cp(c, 0, &len);
      if (text::is_white_space(cp)) {
        flush();
        continue;
      }
      if (have.insert(c).second) seen.push_back(c);
      if (text::is_numeric(cp) || (cp < 0x80 && std::ispunct(static_cast<int>(cp)))) {
        flush();
        word.push_back(c);
        flush();
        continue;
      }
      word.push_back(c);
    }
    flush();
  }
  t.train(n, prefix.size());
  Vocab v;
  for (const char* s : {"[UNK]", "[CLS]", "[SEP]"}) v.add(s);
  for (const auto& c : seen)
    for (const std::string& f : {c, prefix + c, c + suffix, prefix + c + suffix}) v.add(f);
  for (const auto& m : t.merged_tokens) v.add(m);
  json added_tokens = {added(0, "[UNK]", true, false), added(1, "[CLS]", true, false), added(2, "[SEP]", true, false),
                       added(static_cast<int>(v.tokens.size()), "[DAY]", false, true)};
  json normalizer = {{"type", "Sequence"},
                     {"normalizers",
                      {{{"type", "NFKD"}},
                       {{"type", "StripAccents"}},
                       {{"type", "Lowercase"}},
                       {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
                       {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}}}}};
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "WhitespaceSplit"}},
                {{"type", "Punctuation"}, {"behavior", "Isolated"}},
                {{"type", "Digits"}, {"individual_digits", true}}}}};
  json post = {{"type", "BertProcessing"}, {"sep", {"[SEP]", 2}}, {"cls", {"[CLS]", 1}}};
  json decoder = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Replace"}, {"pattern", {{"Regex", "</w>"}}}, {"content", " "}},
                    {{"type", "Replace"}, {"pattern", string_pattern(prefix)}, {"content", ""}},
                    {{"type", "Strip"}, {"content", " "}, {"start", 0}, {"stop", 1}}}}};
  return file(added_tokens, normalizer, pre, post, decoder, model(v, t, "[UNK]", prefix, suffix, false, false, false))
      .dump(1);
}

}  // namespace

const std::vector<std::string>& flavours() {
  static const std::vector<std::string> f = {"superword",    "sentencepiece", "metaspace",
                                             "added_tokens", "normalized",    "limits"};
  return f;
}

std::string tokenizer_json(const std::string& flavour, int merges, int vocab_size) {
  if (flavour == "superword") return superword(merges, vocab_size);
  if (flavour == "sentencepiece") return sentencepiece(merges, false);
  if (flavour == "metaspace") return sentencepiece(merges, true);
  if (flavour == "added_tokens") return added_tokens_flavour(merges);
  if (flavour == "normalized") return normalized_flavour(merges);
  if (flavour == "limits") {
    // The sentencepiece flavour (<s> A template) with truncation and padding:
    // 19 tokens kept from the end, <s>, then left-padded with </s> to a
    // multiple of 8 of at least 22.
    json j = json::parse(sentencepiece(merges, false));
    j["truncation"] = {{"direction", "Left"}, {"max_length", 20}, {"strategy", "LongestFirst"}, {"stride", 0}};
    j["padding"] = {{"strategy", {{"Fixed", 22}}},
                    {"direction", "Left"},
                    {"pad_to_multiple_of", 8},
                    {"pad_id", 2},
                    {"pad_type_id", 0},
                    {"pad_token", "</s>"}};
    return j.dump(1);
  }
  throw Error("unknown synthetic tokenizer flavour \"" + flavour + "\"");
}

const std::vector<std::string>& training_texts() {
  static const std::vector<std::string> t = {
      "The image shows a small brown dog sitting on a wooden bench in the park.",
      "A man in a blue shirt is riding a bicycle down the street of the old town.",
      "Two cats are sleeping on the windowsill, one of them is black and the other is white.",
      "Question: how many people are in the picture? Answer: there are three people in the picture.",
      "In the center of the image there is a red car parked next to a tall building.",
      "The sky is clear and blue, with a few white clouds over the mountains in the distance.",
      "A plate of food with rice, vegetables and a piece of grilled chicken on a table.",
      "She is holding an umbrella while walking along the beach at sunset.",
      "The sign on the wall says \"Welcome to the museum\" in large letters.",
      "There are 12 apples, 7 oranges and 3 bananas in the basket; 22 pieces of fruit in all.",
      "It's a photo of a kitchen: a stove, a sink, a refrigerator and a window.",
      "On the left side of the image, a woman is reading a book; on the right, a child is playing.",
      "The train arrives at 10:45 on platform 9, and leaves again at 11:05.",
      "A group of friends are sitting around a table, laughing and drinking coffee.",
      "The bird is perched on a branch of the tree, looking to the left.",
      "What color is the car? The car is red.\nWhere is the dog? The dog is on the bench.",
      "Caption: a person standing in front of a large painting in a gallery.\n\n",
      "Point: the cup on the table. Detect: every face in the crowd.",
      "Le chat est assis sur la table. Café, crème brûlée et naïve élève à Noël.",
      "Der Hund läuft über die Straße. Größe, Übung und schöne Grüße aus München.",
      "El niño está jugando en el jardín con su perro pequeño. ¿Dónde está la estación?",
      "Собака сидит на скамейке в парке, а кошка спит на окне.",
      "这是一只坐在公园长椅上的小狗。图片中有三个人。",
      "これは公園のベンチに座っている小さな犬です。",
      "공원 벤치에 앉아 있는 작은 개입니다.",
      "Emoji test: 👍 😀 🐶 🚗 — and symbols © ® ™ ½ ² ﬁ ℌ.",
      "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
      "Numbers like 3.14159, 2,718 and 1e10 appear in the text; so do dates like 2025-06-21.",
      "   leading spaces, trailing spaces   \tand\ttabs, multiple   spaces inside.",
      "the the the of of of and and and in in in to to to a a a is is is",
  };
  return t;
}

}  // namespace md::synth
