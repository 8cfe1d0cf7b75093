// Casts for the declarative field mapping (isthmus.FieldMap): one scalar in, one scalar out,
// or the reason it cannot be cast. The rules are the forgiving-but-exact ones an API mapping
// needs: "42" is an int and 42.0 too, but 42.5 and "4x" are not; "yes"/"no" are bools;
// datetimes in any ISO 8601 offset (or epoch seconds) become UTC "YYYY-MM-DDTHH:MM:SS.sssZ".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace isthmus::pipeline {

enum class Cast { none, str, int64, float64, boolean, datetime };

// "str", "int", "float", "bool", "datetime"; nullopt for anything else.
std::optional<Cast> cast_from_name(std::string_view name);
const char* cast_name(Cast c);

// A JSON scalar: null, bool, integer, double or text.
using Scalar = std::variant<std::monostate, bool, std::int64_t, double, std::string>;

// The cast value, or nullopt with `why` saying what was wrong ("'4x' is not an integer").
// Null stays null whatever the cast (a missing value is the mapping's business, not the cast's).
std::optional<Scalar> cast_scalar(const Scalar& in, Cast to, std::string& why);

// An ISO 8601 / RFC 3339 datetime ("2024-01-10", "2024-01-10T03:00:00.5+02:00"; no offset means
// UTC) as Unix milliseconds, or nullopt when it is not one.
std::optional<std::int64_t> iso_millis(std::string_view text);

}  // namespace isthmus::pipeline
