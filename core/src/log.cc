// The process-wide logger behind intersync/log.h: spdlog with a stderr or a
// syslog sink. Lines carry a timestamp and level so an operator can follow
// a fileset's life in `journalctl -t intersyncd` or in the terminal.
#include "intersync/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <syslog.h>

#include <memory>
#include <mutex>

namespace intersync {
namespace {

std::mutex g_mutex;
std::shared_ptr<spdlog::logger> g_logger;

spdlog::level::level_enum to_spdlog(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return spdlog::level::debug;
    case LogLevel::Info:
      return spdlog::level::info;
    case LogLevel::Warn:
      return spdlog::level::warn;
    case LogLevel::Error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger> make_logger(LogSink sink, std::string_view ident) {
  std::shared_ptr<spdlog::logger> logger;
  if (sink == LogSink::Syslog) {
    auto s = std::make_shared<spdlog::sinks::syslog_sink_mt>(std::string(ident), LOG_PID,
                                                             LOG_DAEMON, true);
    logger = std::make_shared<spdlog::logger>(std::string(ident), s);
    logger->set_pattern("%v");
  } else {
    auto s = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    logger = std::make_shared<spdlog::logger>(std::string(ident), s);
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %n[%P] %l: %v");
  }
  logger->flush_on(spdlog::level::debug);
  return logger;
}

}  // namespace

void log_setup(LogSink sink, LogLevel min_level, std::string_view ident) {
  auto logger = make_logger(sink, ident);
  logger->set_level(to_spdlog(min_level));
  std::lock_guard lock(g_mutex);
  g_logger = std::move(logger);
}

void log_message(LogLevel level, std::string_view message) {
  std::shared_ptr<spdlog::logger> logger;
  {
    std::lock_guard lock(g_mutex);
    if (!g_logger) {
      g_logger = make_logger(LogSink::Stderr, "intersync");
      g_logger->set_level(spdlog::level::info);
    }
    logger = g_logger;
  }
  logger->log(to_spdlog(level), "{}", message);
}

}  // namespace intersync
