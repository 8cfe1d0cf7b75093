#include "isthmus/auth/crypto.hpp"

#include <gtest/gtest.h>

#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

struct HmacVector {
  std::string key, data, sha256_hex, sha512_hex_prefix;
};

// RFC 4231 section 4, test cases 1-4, 6 and 7 (case 5 is about truncated output).
std::vector<HmacVector> rfc4231() {
  std::string k4;
  for (int i = 1; i <= 25; ++i) k4.push_back(static_cast<char>(i));
  return {
      {std::string(20, '\x0b'), "Hi There",
       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
       "87aa7cdea5ef619d4ff0b4241a1d6cb0"},
      {"Jefe", "what do ya want for nothing?",
       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
       "164b7a7bfcf819e2e395fbe73b56e0a3"},
      {std::string(20, '\xaa'), std::string(50, '\xdd'),
       "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
       "fa73b0089d56a284efb0f0756c890be9"},
      {k4, std::string(50, '\xcd'),
       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
       "b0ba465637458c6990e5a8c5f61d4af7"},
      {std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First",
       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
       "80b24263c7c1a3ebb71493c1dd7be8b4"},
      {std::string(131, '\xaa'),
       "This is a test using a larger than block-size key and a larger than block-size data. "
       "The key needs to be hashed before being used by the HMAC algorithm.",
       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
       "e37b6a775dc87dbaa4dfa9f96e5e3ffd"},
  };
}

TEST(Hmac, Rfc4231Sha256) {
  for (const auto& v : rfc4231()) EXPECT_EQ(hex(hmac(Digest::sha256, v.key, v.data)), v.sha256_hex);
}

TEST(Hmac, Rfc4231Sha512) {
  for (const auto& v : rfc4231())
    EXPECT_EQ(hex(hmac(Digest::sha512, v.key, v.data)).substr(0, 32), v.sha512_hex_prefix);
}

TEST(Hmac, Rfc4231Case5Truncated) {
  // Only the first 128 bits are specified for this case.
  EXPECT_EQ(hex(hmac(Digest::sha256, std::string(20, '\x0c'), "Test With Truncation")).substr(0, 32),
            "a3b6167473100ee06e0c796c2955552b");
}

TEST(Hmac, EmptyKeyWorks) {
  EXPECT_EQ(hex(hmac(Digest::sha256, "", "")),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

TEST(Digest, ParsesNames) {
  EXPECT_EQ(parse_digest("SHA-256"), Digest::sha256);
  EXPECT_EQ(parse_digest("hmac-sha512"), Digest::sha512);
  EXPECT_THROW(parse_digest("md5"), Error);
}

TEST(Pkce, Rfc7636AppendixB) {
  EXPECT_EQ(pkce_challenge_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

TEST(Pkce, VerifierUsesUnreservedCharactersOnly) {
  for (std::size_t n : {43u, 64u, 128u}) {
    auto v = pkce_verifier(n);
    EXPECT_EQ(v.size(), n);
    EXPECT_EQ(v.find_first_not_of(
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"),
              std::string::npos);
  }
  EXPECT_NE(pkce_verifier(), pkce_verifier());
  EXPECT_THROW(pkce_verifier(42), Error);
}

TEST(Encoding, Base64RoundTrips) {
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64url("\xfb\xff"), "-_8");
  for (int n = 0; n < 40; ++n) {
    auto b = random_bytes(static_cast<std::size_t>(n));
    EXPECT_EQ(unbase64(base64(b)), b);
    EXPECT_EQ(unbase64(base64url(b)), b);
  }
  EXPECT_THROW(unbase64("a$bc"), Error);
  EXPECT_EQ(unhex("00FFaa"), std::string("\x00\xff\xaa", 3));
  EXPECT_THROW(unhex("abc"), Error);
}

TEST(ConstantTime, ComparesContent) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(AesGcm, RoundTripsWithFreshNonces) {
  const std::string key = random_bytes(32);
  const auto a = aes256gcm_seal(key, "refresh-token-value", "cred-1");
  const auto b = aes256gcm_seal(key, "refresh-token-value", "cred-1");
  EXPECT_NE(a, b);  // a random nonce each time
  EXPECT_EQ(a.find("refresh-token-value"), std::string::npos);
  EXPECT_EQ(aes256gcm_open(key, a, "cred-1"), "refresh-token-value");
  EXPECT_EQ(aes256gcm_open(key, aes256gcm_seal(key, "", ""), ""), "");
}

TEST(AesGcm, DetectsTamperingWrongKeyAndWrongAad) {
  const std::string key = random_bytes(32);
  const auto sealed = aes256gcm_seal(key, "secret", "cred-1");
  auto expect_tampered = [](auto&& f) {
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), make_error_code(errc::token_store_tampered));
    }
  };
  for (std::size_t i = 0; i < sealed.size(); ++i) {
    auto bad = sealed;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    expect_tampered([&] { aes256gcm_open(key, bad, "cred-1"); });
  }
  expect_tampered([&] { aes256gcm_open(random_bytes(32), sealed, "cred-1"); });
  expect_tampered([&] { aes256gcm_open(key, sealed, "cred-2"); });
  expect_tampered([&] { aes256gcm_open(key, sealed.substr(0, 20), "cred-1"); });
  EXPECT_THROW(aes256gcm_seal("short", "x", ""), Error);
}

TEST(Rs256, RejectsWhatIsNotAnRsaPrivateKey) {
  EXPECT_THROW(rs256_sign("not a key", "data"), Error);
}

}  // namespace
}  // namespace isthmus::auth
