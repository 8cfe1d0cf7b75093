// isthmus._core: credentials, token stores, signing and webhook verification. The Python
// classes in isthmus/auth.py wrap these; nothing here prints or returns a secret it was given.
#include <chrono>
#include <condition_variable>
#include <mutex>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "exceptions.hpp"
#include "isthmus/auth/credential.hpp"
#include "isthmus/auth/crypto.hpp"
#include "isthmus/auth/jwt.hpp"
#include "isthmus/auth/oauth2.hpp"
#include "isthmus/auth/signing.hpp"
#include "isthmus/auth/token_store.hpp"
#include "isthmus/auth/webhook.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/client.hpp"
#include "isthmus/runtime/engine.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

using auth::Credential;

// The token_type that marks a stored secret (see TokenStore.save_secret).
constexpr const char* kSecretRecord = "isthmus-secret";

// A Python callable that may be called, copied and destroyed from I/O threads: every touch
// of the Python object happens with the GIL held.
class PyHook {
 public:
  explicit PyHook(py::object f) : f_(new py::object(std::move(f)), [](py::object* p) {
    if (!Py_IsInitialized()) return;  // interpreter gone: leaking beats crashing at exit
    py::gil_scoped_acquire gil;
    delete p;
  }) {}

  void operator()(const auth::TokenEvent& ev) const {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      py::dict d;
      d["expires_in"] = ev.expires_in;
      d["rotated"] = ev.rotated;
      d["scope"] = ev.scope;
      d["grant"] = ev.grant;
      (*f_)(d);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("isthmus OAuth2 on_token hook");
    }
  }

 private:
  std::shared_ptr<py::object> f_;
};

// Token fetches started from Python (ensure_token) need a transport of their own; one client
// on the shared engine serves them all.
std::shared_ptr<http::Transport> sync_transport() {
  static std::mutex m;
  static std::weak_ptr<http::Client> cached;
  std::lock_guard lock(m);
  if (auto c = cached.lock()) return c;
  auto c = std::make_shared<http::Client>(Engine::shared());
  cached = c;
  return c;
}

auth::Grant parse_grant(const std::string& g) {
  if (g == "client_credentials") return auth::Grant::client_credentials;
  if (g == "refresh_token") return auth::Grant::refresh_token;
  if (g == "authorization_code") return auth::Grant::authorization_code;
  if (g == "jwt_bearer") return auth::Grant::jwt_bearer;
  throw Error(errc::invalid_argument, "grant: '" + g + "' is not a supported grant");
}

auth::ClientAuth parse_client_auth(const std::string& m) {
  if (m == "client_secret_basic") return auth::ClientAuth::basic;
  if (m == "client_secret_post") return auth::ClientAuth::post;
  if (m == "none") return auth::ClientAuth::none;
  throw Error(errc::invalid_argument, "auth_method: '" + m +
                                          "' is not one of 'client_secret_basic', "
                                          "'client_secret_post', 'none'");
}

http::Request make_request(const std::string& method, const std::string& url,
                           const http::Headers& headers, const py::bytes& body) {
  http::Request r;
  r.method = method;
  r.url = url;
  r.headers = headers;
  std::string b = body;
  if (!b.empty()) r.body = std::make_shared<const std::string>(std::move(b));
  return r;
}

// The `sign` method of a request signer, for tests against reference signers: returns the
// headers it set and the canonical string it signed.
template <class Signer>
py::tuple sign_request(const Signer& s, const std::string& method, const std::string& url,
                       const http::Headers& headers, const py::bytes& body, std::int64_t timestamp) {
  auto r = make_request(method, url, headers, body);
  std::string canonical = s.sign(r, timestamp);
  return py::make_tuple(r.headers, py::bytes(canonical));
}

// A signer of fresh RFC 7523 assertions, shared by Python (to inspect one) and OAuth2.
struct JwtAssertion {
  std::function<std::string()> make;
};

}  // namespace

void bind_auth(py::module_& m) {
  py::class_<JwtAssertion, std::shared_ptr<JwtAssertion>>(m, "JwtAssertion")
      .def(py::init([](std::string algorithm, py::bytes key, std::string key_id,
                       std::string issuer, std::string subject, std::string audience,
                       double lifetime, std::string extra_claims_json) {
             auth::JwtAssertionOptions j;
             j.algorithm = std::move(algorithm);
             j.key = key;
             j.key_id = std::move(key_id);
             j.issuer = std::move(issuer);
             j.subject = std::move(subject);
             j.audience = std::move(audience);
             j.lifetime = lifetime;
             j.extra_claims_json = std::move(extra_claims_json);
             return std::make_shared<JwtAssertion>(JwtAssertion{auth::jwt_assertion_signer(std::move(j))});
           }),
           py::arg("algorithm"), py::arg("key"), py::arg("key_id"), py::arg("issuer"),
           py::arg("subject"), py::arg("audience"), py::arg("lifetime"),
           py::arg("extra_claims_json"))
      .def("make", [](const JwtAssertion& self) { return self.make(); });

  py::class_<Credential, std::shared_ptr<Credential>>(m, "Credential",
      "Core credential; use the classes in isthmus.auth.");

  py::class_<auth::ApiKey, Credential, std::shared_ptr<auth::ApiKey>>(m, "ApiKey")
      .def(py::init<std::string, std::string, std::string>(), py::arg("value"), py::arg("header"),
           py::arg("query"));
  py::class_<auth::BasicAuth, Credential, std::shared_ptr<auth::BasicAuth>>(m, "BasicAuth")
      .def(py::init<const std::string&, const std::string&>(), py::arg("user"), py::arg("password"));
  py::class_<auth::BearerToken, Credential, std::shared_ptr<auth::BearerToken>>(m, "BearerToken")
      .def(py::init<std::string>(), py::arg("token"));


  py::class_<auth::HmacSigner, Credential, std::shared_ptr<auth::HmacSigner>>(m, "HmacSigner")
      .def(py::init([](py::bytes key, const std::string& algorithm, std::string canonical,
                       std::string header, std::string prefix, bool base64,
                       std::string timestamp_header, std::string nonce_header) {
             auth::HmacSignerOptions o;
             o.key = key;
             o.digest = auth::parse_digest(algorithm);
             o.canonical = std::move(canonical);
             o.signature_header = std::move(header);
             o.signature_prefix = std::move(prefix);
             o.base64 = base64;
             o.timestamp_header = std::move(timestamp_header);
             o.nonce_header = std::move(nonce_header);
             return std::make_shared<auth::HmacSigner>(std::move(o));
           }),
           py::arg("key"), py::arg("algorithm"), py::arg("canonical"), py::arg("header"),
           py::arg("prefix"), py::arg("base64"), py::arg("timestamp_header"),
           py::arg("nonce_header"))
      .def("sign", &sign_request<auth::HmacSigner>,
           py::arg("method"), py::arg("url"), py::arg("headers"), py::arg("body"),
           py::arg("timestamp"));

  py::class_<auth::AwsSigV4, Credential, std::shared_ptr<auth::AwsSigV4>>(m, "AwsSigV4")
      .def(py::init([](std::string access_key, std::string secret_key, std::string region,
                       std::string service, std::string session_token) {
             return std::make_shared<auth::AwsSigV4>(auth::AwsSigV4Options{
                 std::move(access_key), std::move(secret_key), std::move(region),
                 std::move(service), std::move(session_token), {}});
           }),
           py::arg("access_key"), py::arg("secret_key"), py::arg("region"), py::arg("service"),
           py::arg("session_token"))
      .def("sign", &sign_request<auth::AwsSigV4>,
           py::arg("method"), py::arg("url"), py::arg("headers"), py::arg("body"),
           py::arg("timestamp"));

  py::class_<auth::TokenStore, std::shared_ptr<auth::TokenStore>>(m, "TokenStore")
      .def_static("memory", &auth::make_memory_token_store)
      .def_static("sqlite",
                  [](const std::string& path, const std::string& key_env,
                     const std::string& key_file) {
                    std::string key = key_file.empty() ? auth::token_key_from_env(key_env)
                                                       : auth::token_key_from_file(key_file);
                    return auth::make_sqlite_token_store(path, std::move(key));
                  },
                  py::arg("path"), py::arg("key_env"), py::arg("key_file"))
      .def("contains", [](auth::TokenStore& s, const std::string& id) {
        return s.load(id).has_value();
      }, py::arg("id"))
      .def("erase", &auth::TokenStore::erase, py::arg("id"))
      // Secrets that are not tokens (a connection's credentials, as JSON text) ride in a record
      // of their own kind, sealed like a token record, so neither is ever read as the other.
      .def("save_secret", [](auth::TokenStore& s, const std::string& id, const std::string& text) {
        auth::TokenRecord record;
        record.token_type = kSecretRecord;
        record.access_token = text;
        py::gil_scoped_release release;
        s.save(id, record);
      }, py::arg("id"), py::arg("text"))
      .def("load_secret", [](auth::TokenStore& s, const std::string& id) -> std::optional<std::string> {
        std::optional<auth::TokenRecord> record;
        {
          py::gil_scoped_release release;
          record = s.load(id);
        }
        if (!record) return std::nullopt;
        if (record->token_type != kSecretRecord)
          throw Error(errc::token_store_error, "token store: record " + id + " holds tokens, not stored secrets");
        return record->access_token;
      }, py::arg("id"));

  py::class_<auth::RefreshLock, std::shared_ptr<auth::RefreshLock>>(
      m, "RefreshLock", "Serializes token requests across processes; Coordination.refresh_lock() makes one.");

  py::class_<auth::OAuth2, Credential, std::shared_ptr<auth::OAuth2>>(m, "OAuth2")
      .def(py::init([](const std::string& grant, std::string token_url, std::string client_id,
                       std::string client_secret, const std::string& auth_method,
                       std::vector<std::string> scopes, std::string audience,
                       std::string refresh_token, std::string code, std::string code_verifier,
                       std::string redirect_uri, std::shared_ptr<JwtAssertion> jwt,
                       std::vector<std::pair<std::string, std::string>> extra_params,
                       double refresh_before, double default_lifetime, double timeout,
                       std::shared_ptr<auth::TokenStore> store, std::string store_id,
                       py::object on_token, std::shared_ptr<auth::RefreshLock> refresh_lock) {
             auth::OAuth2Options o;
             o.grant = parse_grant(grant);
             o.token_url = std::move(token_url);
             o.client_id = std::move(client_id);
             o.client_secret = std::move(client_secret);
             o.client_auth = parse_client_auth(auth_method);
             o.scopes = std::move(scopes);
             o.audience = std::move(audience);
             o.refresh_token = std::move(refresh_token);
             o.code = std::move(code);
             o.code_verifier = std::move(code_verifier);
             o.redirect_uri = std::move(redirect_uri);
             if (jwt) o.assertion = jwt->make;
             o.extra_params = std::move(extra_params);
             o.refresh_before = refresh_before;
             o.default_lifetime = default_lifetime;
             o.timeout = timeout;
             o.store = std::move(store);
             o.store_id = std::move(store_id);
             if (!on_token.is_none()) o.on_token = PyHook(std::move(on_token));
             o.refresh_lock = std::move(refresh_lock);
             // create() reads the store, which may be a Redis round trip away. Nothing in `o`
             // needs the GIL (the hook takes it itself).
             py::gil_scoped_release release;
             return auth::OAuth2::create(std::move(o));
           }),
           py::arg("grant"), py::arg("token_url"), py::arg("client_id"), py::arg("client_secret"),
           py::arg("auth_method"), py::arg("scopes"), py::arg("audience"),
           py::arg("refresh_token"), py::arg("code"), py::arg("code_verifier"),
           py::arg("redirect_uri"), py::arg("jwt"), py::arg("extra_params"),
           py::arg("refresh_before"), py::arg("default_lifetime"), py::arg("timeout"),
           py::arg("store"), py::arg("store_id"), py::arg("on_token"),
           py::arg("refresh_lock") = py::none())
      .def("ensure_token",
           [](auth::OAuth2& self) {
             // Blocks (GIL released) until a token is cached or the fetch failed.
             struct Wait {
               std::mutex m;
               std::condition_variable cv;
               bool done = false;
               std::error_code ec;
             };
             auto w = std::make_shared<Wait>();
             {
               py::gil_scoped_release release;
               // Held until the fetch completes: dropping the client would cancel it.
               auto via = sync_transport();
               self.ensure_token(via, [w](std::error_code ec) {
                 std::lock_guard lock(w->m);
                 w->ec = ec;
                 w->done = true;
                 w->cv.notify_all();
               });
               std::unique_lock lock(w->m);
               w->cv.wait(lock, [&] { return w->done; });
             }
             if (w->ec) raise_error(w->ec, self.failure_message());
           })
      .def_property_readonly("expires_in", &auth::OAuth2::expires_in)
      .def_property_readonly("has_token", &auth::OAuth2::has_token)
      .def_property_readonly("store_id", &auth::OAuth2::store_id)
      .def_property_readonly("token_requests", &auth::OAuth2::token_requests);

  m.def("sign_jwt",
        [](const std::string& algorithm, py::bytes key, const std::string& claims_json,
           const std::string& key_id) { return auth::sign_jwt(algorithm, key, claims_json, key_id); },
        py::arg("algorithm"), py::arg("key"), py::arg("claims_json"), py::arg("key_id"));
  m.def("pkce_verifier", &auth::pkce_verifier, py::arg("length") = 64);
  m.def("pkce_challenge_s256", &auth::pkce_challenge_s256, py::arg("verifier"));
  m.def("random_token", [](std::size_t n) { return auth::base64url(auth::random_bytes(n)); },
        py::arg("nbytes"));
  m.def("constant_time_equal", [](py::bytes a, py::bytes b) {
    return auth::constant_time_equal(std::string(a), std::string(b));
  });
  m.def("generate_token_key", [] { return auth::hex(auth::random_bytes(32)); });
  m.def("hmac",
        [](const std::string& algorithm, py::bytes key, py::bytes data) {
          return py::bytes(auth::hmac(auth::parse_digest(algorithm), key, data));
        },
        py::arg("algorithm"), py::arg("key"), py::arg("data"));
  m.def("verify_webhook",
        [](const std::string& scheme, const std::string& secret, const http::Headers& headers,
           py::bytes body, double tolerance, double now) -> py::object {
          auto v = auth::verify_webhook(auth::parse_webhook_scheme(scheme), secret, headers, body,
                                        tolerance, now);
          if (v.ok()) return py::none();
          return py::make_tuple(v.failed_check, v.message);
        },
        py::arg("scheme"), py::arg("secret"), py::arg("headers"), py::arg("body"),
        py::arg("tolerance"), py::arg("now"));
  m.def("sign_webhook",
        [](const std::string& scheme, const std::string& secret, const std::string& id,
           double timestamp, py::bytes body) {
          return auth::sign_webhook(auth::parse_webhook_scheme(scheme), secret, id, timestamp, body);
        },
        py::arg("scheme"), py::arg("secret"), py::arg("id"), py::arg("timestamp"),
        py::arg("body"));
}

}  // namespace isthmus::bindings
