// The HTTP/1.1 message codec shared by every transport and by the CGI
// program: an incremental parser (llhttp underneath) for requests or
// responses, and serializers for message heads. It knows framing only
// (start line, headers, Content-Length / chunked bodies, keep-alive); what a
// message means is the protocol's business (core's request handler).
//
// The parser enforces limits before anything is buffered: an overlong
// request target, too many header bytes or a body larger than allowed stops
// parsing with the HTTP status to answer (414, 431, 413); malformed input
// stops with 400 and a reason naming the llhttp error.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace intersync {

// Header fields in arrival order; lookups are case-insensitive.
class HttpHeaders {
 public:
  void add(std::string name, std::string value);
  void set(std::string_view name, std::string value);                // replaces all of `name`
  std::optional<std::string_view> get(std::string_view name) const;  // first match
  const std::vector<std::pair<std::string, std::string>>& all() const { return fields_; }
  bool empty() const { return fields_.empty(); }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

struct HttpRequestHead {
  std::string method;     // "GET", "POST", ...
  std::string target;     // request-target as sent ("/cgi-bin/intersync/docs/info?x=1")
  int version_minor = 1;  // HTTP/1.<minor>
  HttpHeaders headers;
  bool keep_alive = true;  // from version and Connection header
  std::optional<uint64_t> content_length;
};

struct HttpResponseHead {
  int status = 200;
  std::string reason;  // empty: the standard reason phrase
  int version_minor = 1;
  HttpHeaders headers;
  bool keep_alive = true;
  std::optional<uint64_t> content_length;
};

const char* http_reason_phrase(int status);

// Serializes a head, ending with the blank line. Content-Length is written
// from content_length when set (and not already in headers); "Connection:
// close" when !keep_alive.
std::string http_serialize(const HttpRequestHead& head);
std::string http_serialize(const HttpResponseHead& head);

struct HttpLimits {
  size_t max_target = 8 * 1024;         // 414 beyond
  size_t max_header_bytes = 32 * 1024;  // all header names+values; 431 beyond
  size_t max_headers = 100;             // 431 beyond
  uint64_t max_body = 64ull << 20;      // 413 beyond (requests); responses: unlimited
};

// An error that stopped the parser: the status a server should answer with
// (400, 413, 414, 431) and a reason for the log/body.
struct HttpParseError {
  int status = 400;
  std::string reason;
};

// Incremental parser for a stream of messages on one connection. Feed bytes
// as they arrive; callbacks fire in order. The parser survives keep-alive:
// after on_message_complete the next message starts.
class HttpParser {
 public:
  enum class Kind { Request, Response };

  struct Callbacks {
    // Complete head. For requests `request` is set, for responses `response`.
    std::function<void(HttpRequestHead&)> on_request_head;
    std::function<void(HttpResponseHead&)> on_response_head;
    // A piece of the body (de-chunked). May be called many times.
    std::function<void(std::string_view)> on_body;
    std::function<void()> on_message_complete;
  };

  HttpParser(Kind kind, Callbacks callbacks, HttpLimits limits = {});
  ~HttpParser();
  HttpParser(const HttpParser&) = delete;
  HttpParser& operator=(const HttpParser&) = delete;

  // Feeds bytes. Returns false once the stream is broken (see error()); a
  // broken parser ignores further input. Callbacks may call pause(): feed()
  // then returns true with *consumed < size; call resume() and feed the rest.
  bool feed(const char* data, size_t size, size_t* consumed = nullptr);
  // Signals EOF (for responses delimited by connection close). False if a
  // message was cut short.
  bool finish();

  void pause();
  void resume();

  // For a response parser: the next response answers a HEAD request (no body).
  void expect_head_response();

  const std::optional<HttpParseError>& error() const { return error_; }
  bool in_message() const { return in_message_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::optional<HttpParseError> error_;
  bool in_message_ = false;
  friend struct Impl;
};

// Percent-decodes a URL path or query component ("%2F" -> "/"); "+" is left
// as is in paths. Returns nullopt on a malformed escape or an encoded NUL.
std::optional<std::string> url_decode(std::string_view s);
// Percent-encodes ("%2F", upper-case hex) every byte for which `keep` is
// false.
std::string percent_encode(std::string_view s, bool (*keep)(unsigned char));
// Percent-encodes everything but unreserved characters and '/'.
std::string url_encode_path(std::string_view s);

// Splits "path?query" and parses the query into key/value pairs (decoded).
struct ParsedTarget {
  std::string path;  // decoded
  std::vector<std::pair<std::string, std::string>> query;
  std::optional<std::string_view> param(std::string_view key) const;
};
std::optional<ParsedTarget> parse_target(std::string_view target);

}  // namespace intersync
