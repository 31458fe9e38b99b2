#pragma once
// One error type for everything the engine refuses: bad model files, bad
// images, bad arguments. The message is meant for the user, one line, naming
// the file (or input) and the problem.
#include <stdexcept>
#include <string>

namespace md {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace md
