#include "exceptions.hpp"

#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "bindings.hpp"
#include "isthmus/error.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

// The one table from core codes to classes of isthmus.errors. No default: -Wswitch names a
// code added to the enum and not here, and tests/python/test_errors.py walks every code.
const char* class_name(const std::error_code& ec) {
  if (ec.category() != isthmus::category()) return "InternalError";
  switch (static_cast<errc>(ec.value())) {
    case errc::invalid_url: return "InvalidURL";
    case errc::unsupported_scheme: return "UnsupportedScheme";
    case errc::resolve_failed: return "ResolveError";
    case errc::connect_failed: return "ConnectError";
    case errc::tls_error: return "TLSError";
    case errc::timeout: return "TimeoutError";
    case errc::transport_error: return "ReadError";
    case errc::protocol_error: return "ProtocolError";
    case errc::decoding_error: return "DecodingError";
    case errc::too_many_redirects: return "TooManyRedirects";
    case errc::invalid_header: return "InvalidHeader";
    case errc::body_too_large: return "BodyTooLarge";
    case errc::cancelled: return "Cancelled";
    case errc::shutting_down: return "ClientClosed";
    case errc::invalid_argument: return "ConfigError";
    case errc::token_request_failed: return "TokenError";
    case errc::token_request_lost: return "TokenError";
    case errc::token_store_error: return "TokenStoreError";
    case errc::token_store_tampered: return "TokenStoreError";
    case errc::webhook_invalid: return "WebhookVerificationError";
    case errc::crypto_error: return "CryptoError";
    case errc::quota_exhausted: return "QuotaExhausted";
    case errc::rate_limited: return "Throttled";
    case errc::circuit_open: return "CircuitOpen";
    case errc::retry_deadline: return "RetryDeadlineExceeded";
    case errc::access_refused: return "AccessRefused";
    case errc::state_error: return "StateError";
    case errc::ok:  // not an error: reaching here is a bug
    case errc::internal: return "InternalError";
  }
  return "InternalError";
}

// Classes that take method= and url=: the failures of one request.
bool is_request_error(const std::string& name) {
  return name != "InternalError" && name != "ConfigError" && name != "TokenStoreError" &&
         name != "StateError" && name != "WebhookVerificationError" && name != "CryptoError";
}

}  // namespace

py::object make_exception(const std::error_code& ec, const std::string& message,
                          const std::string& method, const std::string& url) {
  py::module_ errors = py::module_::import("isthmus.errors");
  const std::string name = class_name(ec);
  py::object cls = errors.attr(name.c_str());
  if (!is_request_error(name)) return cls(message);
  py::object py_method = method.empty() ? py::none() : py::object(py::str(method));
  py::object py_url = url.empty() ? py::none() : py::object(py::str(url));
  return cls(message, py::arg("method") = py_method, py::arg("url") = py_url);
}

void raise_error(const std::error_code& ec, const std::string& message, const std::string& method,
                 const std::string& url) {
  py::object exc = make_exception(ec, message, method, url);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

void register_exceptions(py::module_& m) {
  m.def(
      "error_codes",
      [] {
        std::vector<std::tuple<std::string, int, std::string>> out;
        for (int v = 0; v < kErrcCount; ++v) {
          const auto e = static_cast<errc>(v);
          out.emplace_back(std::string(name(e)), v, make_error_code(e).message());
        }
        return out;
      },
      "Every code of the core's error category as (name, value, message), in value order.");
  m.def(
      "raise_error_code",
      [](int value, const std::string& message) {
        if (value < 0 || value >= kErrcCount)
          throw Error(errc::invalid_argument, "value: " + std::to_string(value) + " is no error code");
        // Thrown as the core throws, so it crosses the one translator below.
        throw Error(static_cast<errc>(value), message);
      },
      py::arg("value"), py::arg("message"),
      "Raises the Python exception the core's code `value` becomes (for the test of the table).");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const isthmus::Error& e) {
      py::object exc = make_exception(e.code(), e.what());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
}

}  // namespace isthmus::bindings
