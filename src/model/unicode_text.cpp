#include "model/unicode_text.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/uregex.h>
#include <unicode/ustring.h>
#include <unicode/utext.h>

#include "tensor/error.h"

namespace md::text {

uint32_t next_cp(std::string_view s, size_t i, size_t* len) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  *len = 1;
  if (b0 < 0x80) return b0;
  int n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 1, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 2, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 3, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalid;
  }
  if (i + static_cast<size_t>(n) >= s.size()) return kInvalid;
  for (int k = 1; k <= n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  *len = static_cast<size_t>(n) + 1;
  return cp;
}

uint32_t prev_cp(std::string_view s, size_t end, size_t* len) {
  size_t start = end;
  while (start > 0 && end - start < 4) {
    --start;
    if ((static_cast<unsigned char>(s[start]) & 0xC0) != 0x80) break;
  }
  if (start == end) {
    *len = 0;
    return kInvalid;
  }
  const uint32_t cp = next_cp(s, start, len);
  if (start + *len != end) {
    *len = 1;
    return kInvalid;
  }
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

std::string utf8(uint32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    size_t len;
    if (next_cp(s, i, &len) == kInvalid) return false;
    i += len;
  }
  return true;
}

std::string lossy_utf8(std::string_view s) {
  if (valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    size_t len;
    if (next_cp(s, i, &len) != kInvalid) {
      out.append(s.substr(i, len));
      i += len;
      continue;
    }
    // Maximal subpart: the lead byte plus the continuation bytes that could
    // still have begun a valid sequence (Unicode table 3-7).
    const auto b0 = static_cast<unsigned char>(s[i]);
    int need = b0 >= 0xC2 && b0 <= 0xDF ? 1 : b0 >= 0xE0 && b0 <= 0xEF ? 2 : b0 >= 0xF0 && b0 <= 0xF4 ? 3 : 0;
    size_t j = i + 1;
    for (int k = 0; k < need && j < s.size(); ++k, ++j) {
      const auto b = static_cast<unsigned char>(s[j]);
      unsigned char lo = 0x80, hi = 0xBF;
      if (k == 0) {
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
      }
      if (b < lo || b > hi) break;
    }
    out += kReplacement;
    i = j;
  }
  return out;
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool is_white_space(uint32_t cp) { return cp != kInvalid && u_isUWhiteSpace(static_cast<UChar32>(cp)); }

bool is_numeric(uint32_t cp) { return cp != kInvalid && (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_N_MASK) != 0; }

bool is_mark(uint32_t cp) { return cp != kInvalid && (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_M_MASK) != 0; }

bool is_alphanumeric(uint32_t cp) {
  return cp != kInvalid && (u_isUAlphabetic(static_cast<UChar32>(cp)) || is_numeric(cp));
}

bool is_word(uint32_t cp) {
  if (cp == kInvalid) return false;
  const auto c = static_cast<UChar32>(cp);
  const uint32_t gc = U_GET_GC_MASK(c);
  return u_isUAlphabetic(c) || (gc & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

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

namespace {

std::u16string to_u16(std::string_view s) {
  std::u16string out;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = next_cp(s, i, &len);
    if (cp == kInvalid) cp = 0xFFFD;
    if (cp < 0x10000) {
      out += static_cast<char16_t>(cp);
    } else {
      out += static_cast<char16_t>(0xD7C0 + (cp >> 10));
      out += static_cast<char16_t>(0xDC00 | (cp & 0x3FF));
    }
    i += len;
  }
  return out;
}

std::string from_u16(const char16_t* p, int32_t n) {
  std::string out;
  for (int32_t i = 0; i < n; ++i) {
    uint32_t c = p[i];
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && p[i + 1] >= 0xDC00 && p[i + 1] <= 0xDFFF) {
      c = 0x10000 + ((c - 0xD800) << 10) + (p[i + 1] - 0xDC00);
      ++i;
    }
    append_utf8(out, c);
  }
  return out;
}

}  // namespace

std::string normalize(std::string_view s, NormalForm form) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = form == NormalForm::kNFC    ? icu::Normalizer2::getNFCInstance(err)
                              : form == NormalForm::kNFD  ? icu::Normalizer2::getNFDInstance(err)
                              : form == NormalForm::kNFKC ? icu::Normalizer2::getNFKCInstance(err)
                                                          : icu::Normalizer2::getNFKDInstance(err);
  if (U_FAILURE(err)) throw Error(std::string("ICU normalizer unavailable: ") + u_errorName(err));
  const std::u16string in = to_u16(s);
  icu::UnicodeString src(false, in.data(), static_cast<int32_t>(in.size()));
  icu::UnicodeString dst = n->normalize(src, err);
  if (U_FAILURE(err)) throw Error(std::string("ICU normalization failed: ") + u_errorName(err));
  return from_u16(reinterpret_cast<const char16_t*>(dst.getBuffer()), dst.length());
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len;
    const uint32_t cp = next_cp(s, i, &len);
    i += len;
    if (cp < 0x80) {
      out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
      continue;
    }
    const std::u16string one = to_u16(utf8(cp));
    UChar buf[8];
    UErrorCode err = U_ZERO_ERROR;
    const int32_t n =
        u_strToLower(buf, 8, reinterpret_cast<const UChar*>(one.data()), static_cast<int32_t>(one.size()), "", &err);
    if (U_FAILURE(err)) throw Error(std::string("ICU lowercase failed: ") + u_errorName(err));
    out += from_u16(reinterpret_cast<const char16_t*>(buf), n);
  }
  return out;
}

// ------------------------------------------------------------ Regex ----

struct Regex::Impl {
  URegularExpression* re = nullptr;
  ~Impl() {
    if (re) uregex_close(re);
  }
};

namespace {

// Oniguruma's \s / \S are the White_Space property; ICU's \s leaves out
// U+000B and U+0085, so they are spelled as the property.
std::string to_icu_syntax(std::string_view p) {
  std::string out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      const char c = p[i + 1];
      if (c == 's')
        out += "\\p{White_Space}";
      else if (c == 'S')
        out += "\\P{White_Space}";
      else
        out.append(p.substr(i, 2));
      ++i;
      continue;
    }
    out += p[i];
  }
  return out;
}

}  // namespace

Regex::Regex(std::string_view pattern, const std::string& what) : impl_(std::make_unique<Impl>()) {
  const std::string icu = to_icu_syntax(pattern);
  UParseError pe{};
  UErrorCode err = U_ZERO_ERROR;
  UText* ut = utext_openUTF8(nullptr, icu.data(), static_cast<int64_t>(icu.size()), &err);
  if (U_SUCCESS(err)) impl_->re = uregex_openUText(ut, 0, &pe, &err);
  utext_close(ut);
  if (U_FAILURE(err))
    throw Error(what + ": invalid regex " + std::string(pattern) + " (" + u_errorName(err) + " at offset " +
                std::to_string(pe.offset) + ")");
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  UErrorCode err = U_ZERO_ERROR;
  // A compiled pattern is shared; each call matches with its own clone.
  URegularExpression* re = uregex_clone(impl_->re, &err);
  UText* ut = utext_openUTF8(nullptr, s.data(), static_cast<int64_t>(s.size()), &err);
  if (U_SUCCESS(err)) uregex_setUText(re, ut, &err);
  while (U_SUCCESS(err) && uregex_findNext(re, &err)) {
    const int64_t b = uregex_start64(re, 0, &err), e = uregex_end64(re, 0, &err);
    if (U_FAILURE(err)) break;
    out.emplace_back(static_cast<size_t>(b), static_cast<size_t>(e));
  }
  uregex_close(re);
  utext_close(ut);
  if (U_FAILURE(err)) throw Error(std::string("regex match failed: ") + u_errorName(err));
  return out;
}

}  // namespace md::text
