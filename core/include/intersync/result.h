// Errors as values. Nothing in intersync throws across a loop callback or the
// plugin boundary: a failing call returns an Error carrying a negative errno
// (as libuv does) and a context string that names what failed, usually with
// the path, so that the one place that owns the operation can log it once.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace intersync {

struct Error {
  int code = -EINVAL;   // negative errno
  std::string message;  // human readable, names the object (path, peer, key)
};

// Result<T>: either a value or an Error. A small stand-in for std::expected,
// which g++ 12 (Debian 12) does not ship.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Status: a Result with no value.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}
  static Status Ok() { return Status(); }

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_{0, {}};
  bool ok_ = true;
};

// Builds an Error from errno (or an explicit negative code) and a message.
inline Error make_error(int negative_errno, std::string message) {
  return Error{negative_errno, std::move(message)};
}
inline Error errno_error(std::string message) {
  return Error{-errno, std::move(message)};
}

}  // namespace intersync
