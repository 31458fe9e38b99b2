#pragma once
// An error answered to the client as
//   {"error": {"message": ..., "type": ..., "code": ...}} with an HTTP status.
#include <stdexcept>
#include <string>

#include "model/tasks.h"

namespace md::server {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string code, const std::string& message, std::string type = "")
      : std::runtime_error(message), status(status), code(std::move(code)), type(std::move(type)) {
    if (this->type.empty()) this->type = default_type(status);
  }
  int status;
  std::string code;
  std::string type;

  static std::string default_type(int status) {
    switch (status) {
      case 401: return "authentication_error";
      case 404: return "not_found_error";
      case 405: return "invalid_request_error";
      case 413: return "invalid_request_error";
      case 503: return "server_busy";
      default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
  }
};

inline ApiError bad_request(const std::string& code, const std::string& message) {
  return ApiError(400, code, message);
}

// The one table from the model's error kinds to HTTP (every kind is the
// client's doing: 400, with the kind's code).
inline ApiError task_error(const TaskError& e) {
  switch (e.kind()) {
    case TaskErrorKind::kInvalidRequest: return ApiError(400, "invalid_request", e.what());
    case TaskErrorKind::kUnsupported: return ApiError(400, "unsupported", e.what());
    case TaskErrorKind::kContextOverflow: return ApiError(400, "context_length_exceeded", e.what());
    case TaskErrorKind::kInvalidImage: return ApiError(400, "invalid_image", e.what());
  }
  return ApiError(400, task_error_code(e.kind()), e.what());
}

}  // namespace md::server
