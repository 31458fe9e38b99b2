// tokenizer.json for GPT-2, laid out as Hugging Face `tokenizers` (0.14-0.18)
// saves it: same keys in the same order, 2-space indentation, vocab ordered by
// id, merges as "left right" strings in rank order.
#include "gpt2_tokenizer_json.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace md {
namespace {

using ojson = nlohmann::ordered_json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(path + ": read error");
  return ss.str();
}

ojson byte_level(bool add_prefix_space, bool trim_offsets) {
  ojson j;
  j["type"] = "ByteLevel";
  j["add_prefix_space"] = add_prefix_space;
  j["trim_offsets"] = trim_offsets;
  j["use_regex"] = true;
  return j;
}

}  // namespace

std::string build_gpt2_tokenizer_json(const std::string& encoder_json_text, const std::string& vocab_bpe_text) {
  // encoder.json: {token: id}
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(encoder_json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("encoder.json: invalid JSON: ") + e.what());
  }
  if (!enc.is_object() || enc.empty()) throw Error("encoder.json: expected a non-empty object {token: id}");
  std::vector<std::pair<int64_t, std::string>> vocab;
  vocab.reserve(enc.size());
  for (auto it = enc.begin(); it != enc.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0)
      throw Error("encoder.json: id of \"" + it.key() + "\" is not a non-negative integer");
    vocab.emplace_back(it.value().get<int64_t>(), it.key());
  }
  std::sort(vocab.begin(), vocab.end());
  for (size_t i = 1; i < vocab.size(); ++i) {
    if (vocab[i].first == vocab[i - 1].first)
      throw Error("encoder.json: duplicate id " + std::to_string(vocab[i].first));
  }
  const auto eot = enc.find("<|endoftext|>");
  if (eot == enc.end()) throw Error("encoder.json: no \"<|endoftext|>\" token");

  // vocab.bpe: "#version: ..." then one "left right" merge per line.
  std::vector<std::string> merges;
  std::istringstream lines(vocab_bpe_text);
  std::string line;
  size_t line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.rfind("#version", 0) == 0) continue;
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream parts(line);
    std::string a, b, extra;
    parts >> a >> b;
    if (a.empty() || b.empty() || (parts >> extra))
      throw Error("vocab.bpe: line " + std::to_string(line_no) + " is not \"<left> <right>\"");
    if (!enc.contains(a) || !enc.contains(b) || !enc.contains(a + b))
      throw Error("vocab.bpe: line " + std::to_string(line_no) + " \"" + line +
                  "\" refers to a token missing from encoder.json");
    merges.push_back(a + " " + b);
  }
  if (merges.empty()) throw Error("vocab.bpe: no merges");

  ojson root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  ojson special;
  special["id"] = eot->get<int64_t>();
  special["content"] = "<|endoftext|>";
  special["single_word"] = false;
  special["lstrip"] = false;
  special["rstrip"] = false;
  special["normalized"] = true;
  special["special"] = true;
  root["added_tokens"] = ojson::array({special});
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = byte_level(false, true);
  root["post_processor"] = byte_level(true, false);
  root["decoder"] = byte_level(true, true);
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = "";
  model["end_of_word_suffix"] = "";
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  // Keys are unique (they come from a JSON object), so append to the ordered
  // map's vector directly instead of ordered_map's linear-search insert.
  ojson v = ojson::object();
  auto& entries = static_cast<ojson::object_t::Container&>(v.get_ref<ojson::object_t&>());
  entries.reserve(vocab.size());
  for (const auto& [id, tok] : vocab) entries.emplace_back(tok, ojson(id));
  model["vocab"] = std::move(v);
  model["merges"] = merges;
  root["model"] = std::move(model);
  return root.dump(2);
}

std::string build_gpt2_tokenizer_json_from_dir(const std::string& dir) {
  const std::filesystem::path d(dir);
  const std::string enc_path = (d / "encoder.json").string(), bpe_path = (d / "vocab.bpe").string();
  const std::string enc = read_file(enc_path), bpe = read_file(bpe_path);
  try {
    return build_gpt2_tokenizer_json(enc, bpe);
  } catch (const Error& e) {
    throw Error(dir + "/" + e.what());
  }
}

}  // namespace md
