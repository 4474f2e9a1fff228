// Logging for core and plugins: one logger per process, set up by the daemon
// (stderr or syslog) and shared with plugins through libintersync. Messages
// are whole sentences that name the object (fileset, path, peer); secrets
// such as tokens are never passed here.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace intersync {

enum class LogLevel { Debug, Info, Warn, Error };

enum class LogSink { Stderr, Syslog };

// Configures the process-wide logger. Safe to call again (SIGHUP reload).
void log_setup(LogSink sink, LogLevel min_level, std::string_view ident = "intersyncd");
void log_message(LogLevel level, std::string_view message);

template <typename... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... args) {
  log_message(LogLevel::Debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_info(fmt::format_string<Args...> f, Args&&... args) {
  log_message(LogLevel::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_warn(fmt::format_string<Args...> f, Args&&... args) {
  log_message(LogLevel::Warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void log_error(fmt::format_string<Args...> f, Args&&... args) {
  log_message(LogLevel::Error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace intersync
