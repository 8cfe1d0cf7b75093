// URL helpers that are safe to use anywhere, including in log lines and error messages.
#pragma once

#include <string>
#include <string_view>

namespace isthmus::http {

// The URL with credentials masked as "***": the password of the userinfo and the values of
// query (and fragment) parameters whose names look secret (token, key, secret, password,
// passwd, signature, sig, auth, credential, code; case-insensitive, by substring).
// Works on malformed input too: it never fails, it only masks what it recognises.
std::string redact_url(std::string_view url);

}  // namespace isthmus::http
