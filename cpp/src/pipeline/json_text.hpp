// JSON values of a parsed page written as text (json_write.hpp), and read as Python would see
// them. Private to cpp/src/pipeline: simdjson stays out of the public headers.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <simdjson.h>

#include "isthmus/pipeline/json_write.hpp"

namespace isthmus::pipeline {

void append_json(std::string& out, simdjson::dom::element value);
// str() of the scalar Python would have built from the value ("42", "True", "1.5"); nullopt
// for null, objects and arrays.
std::optional<std::string> python_text(simdjson::dom::element value);
// type(v).__name__ of the Python value the JSON becomes: "dict", "list", "NoneType", ...
const char* python_type_name(simdjson::dom::element value);

}  // namespace isthmus::pipeline
