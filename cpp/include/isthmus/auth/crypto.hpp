// The few cryptographic building blocks auth needs, over OpenSSL's EVP API (kept out of this
// header). Byte strings travel as std::string; functions that can fail on bad input throw
// isthmus::Error (errc::crypto_error or errc::invalid_argument) and never echo key material.
#pragma once

#include <string>
#include <string_view>

namespace isthmus::auth {

enum class Digest { sha1, sha256, sha384, sha512 };

// "sha256" / "SHA-256" / "hmac-sha256" -> Digest; throws errc::invalid_argument otherwise.
Digest parse_digest(std::string_view name);

std::string sha256(std::string_view data);
std::string hash(Digest digest, std::string_view data);
std::string hmac(Digest digest, std::string_view key, std::string_view data);

// Cryptographically strong random bytes (RAND_bytes).
std::string random_bytes(std::size_t n);

// Compares in time that depends only on the lengths, never on where the bytes differ.
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

std::string hex(std::string_view bytes);  // lower case
// Accepts upper or lower case; throws errc::invalid_argument on odd length or a non-hex digit.
std::string unhex(std::string_view text);
std::string base64(std::string_view bytes);
std::string base64url(std::string_view bytes);  // no padding (JWT, PKCE)
// Standard or URL-safe alphabet, padding optional; throws errc::invalid_argument if malformed.
std::string unbase64(std::string_view text);

// AES-256-GCM. seal() returns nonce(12) || ciphertext || tag(16) with a fresh random nonce;
// open() throws errc::token_store_tampered when the tag does not verify (wrong key, altered
// bytes or different associated data).
std::string aes256gcm_seal(std::string_view key32, std::string_view plaintext,
                           std::string_view associated_data);
std::string aes256gcm_open(std::string_view key32, std::string_view sealed,
                           std::string_view associated_data);

// RSASSA-PKCS1-v1_5 with SHA-256 (JWT "RS256") using a PEM private key (PKCS#1 or PKCS#8).
std::string rs256_sign(std::string_view private_key_pem, std::string_view data);

// RFC 7636: a 43..128 character verifier and its S256 challenge.
std::string pkce_verifier(std::size_t length = 64);
std::string pkce_challenge_s256(std::string_view verifier);

}  // namespace isthmus::auth
