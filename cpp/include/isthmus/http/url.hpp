// URL text: the one percent-encoding of the core (the URL builder, the client and the signers
// all use it, so that what is signed is what goes on the wire), and redaction for log lines.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus::http {

// The URL with credentials masked as "***": the password of the userinfo and the values of
// query (and fragment) parameters whose names look secret (token, key, secret, password,
// passwd, signature, sig, auth, credential, code; case-insensitive, by substring).
// Works on malformed input too: it never fails, it only masks what it recognises.
std::string redact_url(std::string_view url);

// RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~) stay; every other byte becomes %XX in
// upper-case hex, so a space is "%20", never "+". `keep` lists extra characters left as they
// are (e.g. "/" for a path).
std::string percent_encode(std::string_view in, std::string_view keep = {});

// Decodes %XX; an invalid escape is kept literally and '+' stays '+'.
std::string percent_decode(std::string_view in);

// "a=1&b" -> {("a","1"), ("b","")}: split on '&' and the first '=', empty members skipped,
// still encoded (decode with percent_decode; a form body also reads '+' as a space).
std::vector<std::pair<std::string, std::string>> split_query(std::string_view query);

// "name=value" pairs joined by '&', names and values percent-encoded as above.
std::string encode_query(const std::vector<std::pair<std::string, std::string>>& params);

// The URL as it goes on the wire (RFC 3987 to RFC 3986): in the path, query and fragment,
// each byte that may not appear there raw (non-ASCII UTF-8, space, " < > \ ^ ` { | } and a
// '%' that starts no escape) becomes %XX. Existing %XX escapes are kept as they are, so
// encoding twice changes nothing. Control bytes stay, for the client to refuse the URL; the
// scheme and authority are left alone.
std::string encode_url(std::string_view url);

}  // namespace isthmus::http
