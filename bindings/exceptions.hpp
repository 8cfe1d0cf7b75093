// The one place where core error codes become Python exceptions (classes in isthmus.errors).
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <system_error>

namespace isthmus::bindings {

// An exception instance for a failed request; method and url (already redacted) may be empty.
pybind11::object make_exception(const std::error_code& ec, const std::string& message,
                                const std::string& method = {}, const std::string& url = {});

// Raises make_exception(...) as the current Python error and throws error_already_set.
[[noreturn]] void raise_error(const std::error_code& ec, const std::string& message,
                              const std::string& method = {}, const std::string& url = {});

}  // namespace isthmus::bindings
