#pragma once
// Unicode helpers for the tokenizer: UTF-8 decoding, the character classes
// Rust and Oniguruma use (the `tokenizers` library is written in Rust and
// matches its regexes with Oniguruma), normalization forms and a regex engine
// (ICU) that runs on UTF-8 and reports byte offsets.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace md::text {

constexpr uint32_t kInvalid = 0xFFFFFFFFu;       // an undecodable byte
constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// Code point at s[i] (kInvalid for an invalid or truncated sequence, length 1).
uint32_t next_cp(std::string_view s, size_t i, size_t* len);
// Code point that ends just before byte `end` (kInvalid if none or invalid).
uint32_t prev_cp(std::string_view s, size_t end, size_t* len);
void append_utf8(std::string& out, uint32_t cp);
std::string utf8(uint32_t cp);
bool valid_utf8(std::string_view s);
// Invalid sequences replaced by U+FFFD, one per maximal ill-formed subpart: the
// rule of Rust's String::from_utf8_lossy and the WHATWG TextDecoder.
std::string lossy_utf8(std::string_view s);
size_t count_code_points(std::string_view valid);

// Character classes of Rust's char / regex crate.
bool is_white_space(uint32_t cp);  // char::is_whitespace, regex \s (White_Space)
bool is_word(uint32_t cp);         // regex \w
bool is_alphanumeric(uint32_t cp);
bool is_numeric(uint32_t cp);  // char::is_numeric (Nd, Nl, No)
bool is_mark(uint32_t cp);     // general category M*
bool is_cjk(uint32_t cp);      // scripts written without spaces (streaming)

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
std::string normalize(std::string_view valid, NormalForm form);
// Full lowercase mapping of each code point on its own (as Rust's
// char::to_lowercase, which knows no context such as a final sigma).
std::string lowercase(std::string_view valid);

// A compiled regex with the syntax of Oniguruma's Ruby flavour as the
// `tokenizers` library uses it (\s is White_Space, \p{L}, look-ahead,
// possessive quantifiers).
class Regex {
 public:
  // Throws md::Error with `what` and ICU's message if the pattern is invalid.
  Regex(std::string_view pattern, const std::string& what);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  // Non-overlapping matches [begin, end) in byte offsets, left to right;
  // empty matches included (callers drop them where the library does).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view valid_utf8) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace md::text
