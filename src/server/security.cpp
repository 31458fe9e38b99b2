#include "server/security.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace md::server {
namespace {

bool sha256(std::string_view s, unsigned char out[32]) {
  unsigned int n = 0;
  return EVP_Digest(s.data(), s.size(), out, &n, EVP_sha256(), nullptr) == 1 && n == 32;
}

}  // namespace

bool api_key_matches(std::string_view got, std::string_view want) {
  unsigned char a[32], b[32];
  if (!sha256(got, a) || !sha256(want, b)) return false;
  // Equal digests of different strings would need a SHA-256 collision.
  return CRYPTO_memcmp(a, b, sizeof a) == 0 && !want.empty();
}

}  // namespace md::server
