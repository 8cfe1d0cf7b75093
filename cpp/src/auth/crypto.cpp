#include "isthmus/auth/crypto.hpp"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cctype>
#include <memory>

#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

const EVP_MD* md(Digest d) {
  switch (d) {
    case Digest::sha1: return EVP_sha1();
    case Digest::sha256: return EVP_sha256();
    case Digest::sha384: return EVP_sha384();
    case Digest::sha512: return EVP_sha512();
  }
  return EVP_sha256();
}

[[noreturn]] void fail(const char* what) { throw Error(errc::crypto_error, what); }

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};

constexpr std::size_t kNonce = 12, kTag = 16, kKey = 32;

const unsigned char* bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

int decode_b64_char(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

}  // namespace

Digest parse_digest(std::string_view name) {
  std::string n;
  for (char c : name)
    if (c != '-' && c != '_') n.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (n.rfind("hmac", 0) == 0) n.erase(0, 4);
  if (n == "sha1") return Digest::sha1;
  if (n == "sha256") return Digest::sha256;
  if (n == "sha384") return Digest::sha384;
  if (n == "sha512") return Digest::sha512;
  throw Error(errc::invalid_argument,
              "algorithm: '" + std::string(name) + "' is not one of sha1, sha256, sha384, sha512");
}

std::string hash(Digest d, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out, &len, md(d), nullptr) != 1) fail("digest failed");
  return {reinterpret_cast<char*>(out), len};
}

std::string sha256(std::string_view data) { return hash(Digest::sha256, data); }

std::string hmac(Digest d, std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  // HMAC() with a null key pointer is treated as "no key"; an empty key must still work.
  static const unsigned char empty = 0;
  const unsigned char* k = key.empty() ? &empty : bytes(key);
  if (!HMAC(md(d), k, static_cast<int>(key.size()), bytes(data), data.size(), out, &len))
    fail("HMAC failed");
  return {reinterpret_cast<char*>(out), len};
}

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  if (n && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    fail("the random number generator failed");
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string hex(std::string_view in) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(in.size() * 2);
  for (unsigned char c : in) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::string unhex(std::string_view text) {
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (text.size() % 2) throw Error(errc::invalid_argument, "hex text has an odd length");
  std::string out;
  out.reserve(text.size() / 2);
  for (std::size_t i = 0; i < text.size(); i += 2) {
    int hi = val(text[i]), lo = val(text[i + 1]);
    if (hi < 0 || lo < 0) throw Error(errc::invalid_argument, "hex text has a non-hex digit");
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

std::string base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16 |
                 static_cast<unsigned char>(in[i + 1]) << 8 | static_cast<unsigned char>(in[i + 2]);
    out += {kAlphabet[v >> 18], kAlphabet[v >> 12 & 63], kAlphabet[v >> 6 & 63], kAlphabet[v & 63]};
  }
  if (i + 1 == in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += {kAlphabet[v >> 18], kAlphabet[v >> 12 & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16 | static_cast<unsigned char>(in[i + 1]) << 8;
    out += {kAlphabet[v >> 18], kAlphabet[v >> 12 & 63], kAlphabet[v >> 6 & 63], '='};
  }
  return out;
}

std::string base64url(std::string_view in) {
  std::string out = base64(in);
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::string unbase64(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1) throw Error(errc::invalid_argument, "base64 text has a bad length");
  std::string out;
  out.reserve(text.size() * 3 / 4);
  unsigned acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = decode_b64_char(c);
    if (v < 0) throw Error(errc::invalid_argument, "base64 text has a character outside the alphabet");
    acc = (acc << 6) | static_cast<unsigned>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>(acc >> bits & 0xff));
    }
  }
  return out;
}

std::string aes256gcm_seal(std::string_view key, std::string_view plaintext,
                           std::string_view aad) {
  if (key.size() != kKey) throw Error(errc::invalid_argument, "AES-256-GCM needs a 32-byte key");
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  if (!ctx) fail("out of memory");
  // A fresh random 96-bit nonce per message: with one key and far fewer than 2^32 writes the
  // collision risk is negligible, and nothing has to remember a counter across crashes.
  std::string out = random_bytes(kNonce);
  out.resize(kNonce + plaintext.size() + kTag);
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int len = 0;
  if (EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, bytes(key), o) != 1)
    fail("AES-GCM init failed");
  if (!aad.empty() &&
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, bytes(aad), static_cast<int>(aad.size())) != 1)
    fail("AES-GCM failed");
  if (!plaintext.empty() && EVP_EncryptUpdate(ctx.get(), o + kNonce, &len, bytes(plaintext),
                                              static_cast<int>(plaintext.size())) != 1)
    fail("AES-GCM failed");
  if (EVP_EncryptFinal_ex(ctx.get(), o + kNonce + plaintext.size(), &len) != 1)
    fail("AES-GCM failed");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTag,
                          o + kNonce + plaintext.size()) != 1)
    fail("AES-GCM tag failed");
  return out;
}

std::string aes256gcm_open(std::string_view key, std::string_view sealed, std::string_view aad) {
  if (key.size() != kKey) throw Error(errc::invalid_argument, "AES-256-GCM needs a 32-byte key");
  if (sealed.size() < kNonce + kTag)
    throw Error(errc::token_store_tampered, "sealed data is too short");
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  if (!ctx) fail("out of memory");
  const std::size_t n = sealed.size() - kNonce - kTag;
  std::string out(n, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int len = 0;
  std::string tag(sealed.substr(kNonce + n));
  if (EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, bytes(key), bytes(sealed)) != 1)
    fail("AES-GCM init failed");
  if (!aad.empty() &&
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, bytes(aad), static_cast<int>(aad.size())) != 1)
    fail("AES-GCM failed");
  if (n && EVP_DecryptUpdate(ctx.get(), o, &len, bytes(sealed) + kNonce, static_cast<int>(n)) != 1)
    fail("AES-GCM failed");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTag, tag.data()) != 1)
    fail("AES-GCM tag failed");
  if (EVP_DecryptFinal_ex(ctx.get(), o + n, &len) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    throw Error(errc::token_store_tampered,
                "stored data failed authentication: wrong key, or the file was altered");
  }
  return out;
}

std::string rs256_sign(std::string_view pem, std::string_view data) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) fail("out of memory");
  std::unique_ptr<EVP_PKEY, PkeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) throw Error(errc::invalid_argument, "private_key: not a PEM private key");
  if (EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA)
    throw Error(errc::invalid_argument, "private_key: RS256 needs an RSA key");
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  if (!ctx) fail("out of memory");
  // RSA keys default to PKCS#1 v1.5 padding, which is what RS256 means (RFC 7518 3.3).
  if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1)
    fail("RS256 init failed");
  std::size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, bytes(data), data.size()) != 1)
    fail("RS256 sign failed");
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, bytes(data),
                     data.size()) != 1)
    fail("RS256 sign failed");
  sig.resize(len);
  return sig;
}

std::string pkce_verifier(std::size_t length) {
  if (length < 43 || length > 128)
    throw Error(errc::invalid_argument, "PKCE verifier length must be 43..128");
  // base64url of random bytes uses only unreserved characters, as RFC 7636 4.1 requires.
  std::string v = base64url(random_bytes(length));
  v.resize(length);
  return v;
}

std::string pkce_challenge_s256(std::string_view verifier) { return base64url(sha256(verifier)); }

}  // namespace isthmus::auth
