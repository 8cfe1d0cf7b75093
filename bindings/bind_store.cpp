// isthmus._core: the state file's whole-file creation and its backup, over the core's one
// SQLite helper (store/sqlite.hpp). SQLite works with the GIL released.
#include <string>

#include "bindings.hpp"
#include "isthmus/store/sqlite.hpp"

namespace py = pybind11;

namespace isthmus::bindings {
namespace {

store::OpenOptions state_options(const std::string& restore_hint) {
  store::OpenOptions o;
  o.what = "state file";
  o.restore_hint = restore_hint;
  return o;
}

}  // namespace

void bind_store(py::module_& m) {
  m.def(
      "create_state_file",
      [](const std::string& path, const std::string& schema, const std::string& restore_hint) {
        py::gil_scoped_release release;
        return store::Database::create_whole(path, schema, state_options(restore_hint));
      },
      py::arg("path"), py::arg("schema"), py::arg("restore_hint") = "",
      "Creates the file holding `schema` whole (built beside it, then hard-linked in); False when "
      "another opener created it first. StateError naming the file on failure.");
  m.def(
      "backup_state_file",
      [](const std::string& path, const std::string& dest, const std::string& restore_hint) {
        py::gil_scoped_release release;
        auto o = state_options(restore_hint);
        o.create = false;
        store::Database(path, o).backup_to(dest);
      },
      py::arg("path"), py::arg("dest"), py::arg("restore_hint") = "",
      "A consistent copy of the whole file at `dest` (SQLite's backup API), put in place whole; "
      "`dest` must not exist. StateError naming the file on failure.");
}

}  // namespace isthmus::bindings
