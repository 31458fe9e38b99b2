#pragma once
// Security helpers of the HTTP side.
#include <string_view>

namespace md::server {

// Whether the API key a client sent equals the configured one, in time that
// depends on neither key's content nor on where they first differ: both are
// hashed (SHA-256) and the digests compared with CRYPTO_memcmp.
bool api_key_matches(std::string_view got, std::string_view want);

}  // namespace md::server
