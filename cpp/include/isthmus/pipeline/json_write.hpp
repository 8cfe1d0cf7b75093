// JSON text as the core writes it, wherever a record comes from (a page, a Python object):
// compact, UTF-8 kept as is, control characters escaped, floats in Python's repr. One writer,
// so a sink's output never depends on which path a record took.
#pragma once

#include <string>
#include <string_view>

namespace isthmus::pipeline {

// `text` (UTF-8) as a JSON string: '"', '\\' and bytes below 0x20 escaped, the rest as is.
void append_quoted(std::string& out, std::string_view text);
// repr(float) of a finite double: the shortest text that reads back the same, positional when
// the decimal exponent is in [-4, 16) ("1.0", "0.0001"), scientific otherwise ("1e+16", "1e-05").
void append_double(std::string& out, double v);

}  // namespace isthmus::pipeline
