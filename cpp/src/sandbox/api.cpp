// The API surface of the sandbox: data, auth, rate limits, faults. Grows in phase 3.
#include "sandbox/router.hpp"

namespace isthmus::sandbox {

class Router::State {};

void Router::init_state() { state_ = std::make_shared<State>(); }

bool Router::handle_api(const Request&, Reply&) { return false; }

void Router::tick(double) {}

}  // namespace isthmus::sandbox
