// The HTTP/1.1 message codec: header fields, head serializers, an
// incremental parser wrapping llhttp, and the URL helpers the protocol
// handler needs. The parser buffers only what a head needs (target, header
// fields) and checks the limits before appending, so a hostile peer cannot
// make it grow past HttpLimits; bodies are streamed through on_body.
#include "intersync/http_codec.h"

#include <fmt/format.h>
#include <llhttp.h>

#include <algorithm>
#include <cctype>
#include <exception>

namespace intersync {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// A header name or value that carries CR or LF would let one header smuggle
// another (response splitting), so serializers replace them with spaces.
void append_field_text(std::string& out, std::string_view text) {
  for (char c : text) out.push_back(c == '\r' || c == '\n' ? ' ' : c);
}

// Writes the header fields and the framing headers derived from the head.
void append_headers(std::string& out, const HttpHeaders& headers,
                    const std::optional<uint64_t>& content_length, bool keep_alive) {
  for (const auto& [name, value] : headers.all()) {
    // "Connection: close" below replaces whatever the caller put there.
    if (!keep_alive && iequals(name, "Connection")) continue;
    append_field_text(out, name);
    out += ": ";
    append_field_text(out, value);
    out += "\r\n";
  }
  if (content_length && !headers.get("Content-Length")) {
    out += fmt::format("Content-Length: {}\r\n", *content_length);
  }
  if (!keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
}

bool is_token_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

void HttpHeaders::add(std::string name, std::string value) {
  fields_.emplace_back(std::move(name), std::move(value));
}

void HttpHeaders::set(std::string_view name, std::string value) {
  auto same = [&](const auto& field) { return iequals(field.first, name); };
  auto first = std::find_if(fields_.begin(), fields_.end(), same);
  if (first == fields_.end()) {
    fields_.emplace_back(std::string(name), std::move(value));
    return;
  }
  first->second = std::move(value);
  fields_.erase(std::remove_if(first + 1, fields_.end(), same), fields_.end());
}

std::optional<std::string_view> HttpHeaders::get(std::string_view name) const {
  for (const auto& [n, v] : fields_) {
    if (iequals(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

const char* http_reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 410:
      return "Gone";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 416:
      return "Range Not Satisfiable";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 428:
      return "Precondition Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    case 507:
      return "Insufficient Storage";
    default:
      return "Unknown";
  }
}

std::string http_serialize(const HttpRequestHead& head) {
  std::string out;
  append_field_text(out, head.method);
  out += ' ';
  append_field_text(out, head.target);
  out += fmt::format(" HTTP/1.{}\r\n", head.version_minor);
  append_headers(out, head.headers, head.content_length, head.keep_alive);
  return out;
}

std::string http_serialize(const HttpResponseHead& head) {
  std::string out = fmt::format("HTTP/1.{} {} ", head.version_minor, head.status);
  append_field_text(out, head.reason.empty() ? http_reason_phrase(head.status) : head.reason);
  out += "\r\n";
  append_headers(out, head.headers, head.content_length, head.keep_alive);
  return out;
}

// The llhttp state and the message being assembled. llhttp calls plain C
// functions; Bind<&Impl::member> turns a member function into one (as Node's
// node_http_parser.cc does), catches what a user callback throws and turns a
// pause() requested during the callback into HPE_PAUSED, the only way llhttp
// lets a callback pause it.
struct HttpParser::Impl {
  Impl(HttpParser& owner, Kind kind, Callbacks callbacks, HttpLimits limits)
      : owner(owner), kind(kind), callbacks(std::move(callbacks)), limits(limits) {
    llhttp_init(&parser, kind == Kind::Request ? HTTP_REQUEST : HTTP_RESPONSE, &settings());
    parser.data = this;
  }

  template <auto Member>
  struct Bind;

  template <int (Impl::*Member)()>
  struct Bind<Member> {
    static int callback(llhttp_t* p) {
      auto* impl = static_cast<Impl*>(p->data);
      return impl->run([impl] { return (impl->*Member)(); });
    }
  };

  template <int (Impl::*Member)(const char*, size_t)>
  struct Bind<Member> {
    static int callback(llhttp_t* p, const char* at, size_t length) {
      auto* impl = static_cast<Impl*>(p->data);
      return impl->run([impl, at, length] { return (impl->*Member)(at, length); });
    }
  };

  static const llhttp_settings_t& settings() {
    static const llhttp_settings_t shared = [] {
      llhttp_settings_t s;
      llhttp_settings_init(&s);
      s.on_message_begin = Bind<&Impl::on_message_begin>::callback;
      s.on_url = Bind<&Impl::on_url>::callback;
      s.on_status = Bind<&Impl::on_status>::callback;
      s.on_header_field = Bind<&Impl::on_header_field>::callback;
      s.on_header_value = Bind<&Impl::on_header_value>::callback;
      s.on_header_value_complete = Bind<&Impl::on_header_value_complete>::callback;
      s.on_headers_complete = Bind<&Impl::on_headers_complete>::callback;
      s.on_body = Bind<&Impl::on_body>::callback;
      s.on_message_complete = Bind<&Impl::on_message_complete>::callback;
      return s;
    }();
    return shared;
  }

  template <typename F>
  int run(F&& f) {
    in_callback = true;
    int rc;
    try {
      rc = f();
    } catch (const std::exception& e) {
      rc = fail(500, fmt::format("callback failed: {}", e.what()));
    } catch (...) {
      rc = fail(500, "callback failed");
    }
    in_callback = false;
    // A callback that must return 1 (skip the body) cannot also pause; the
    // request stays pending and the next callback, on_message_complete,
    // which follows at once, carries it.
    if (rc == 0 && pause_requested) {
      pause_requested = false;
      return HPE_PAUSED;
    }
    return rc;
  }

  int fail(int status, std::string reason) {
    if (!owner.error_) owner.error_ = HttpParseError{status, std::move(reason)};
    llhttp_set_error_reason(&parser, "rejected by intersync");
    return HPE_USER;
  }

  int on_message_begin() {
    target.clear();
    status_text.clear();
    field.clear();
    value.clear();
    headers = HttpHeaders();
    header_bytes = 0;
    header_count = 0;
    body_bytes = 0;
    owner.in_message_ = true;
    return 0;
  }

  int on_url(const char* at, size_t length) {
    if (target.size() + length > limits.max_target) {
      return fail(414, fmt::format("request target longer than {} bytes", limits.max_target));
    }
    target.append(at, length);
    return 0;
  }

  // The reason phrase counts against the header budget: it is buffered too.
  int on_status(const char* at, size_t length) {
    if (!charge_header_bytes(length)) return HPE_USER;
    status_text.append(at, length);
    return 0;
  }

  int on_header_field(const char* at, size_t length) {
    if (field.empty() && ++header_count > limits.max_headers) {
      return fail(431, fmt::format("more than {} header fields", limits.max_headers));
    }
    if (!charge_header_bytes(length)) return HPE_USER;
    // llhttp 8 lets spaces into field names; "Name : v" is a smuggling
    // vector RFC 9112 section 5.1 says to answer with 400.
    if (!std::all_of(at, at + length, is_token_char)) {
      return fail(400, "invalid character in a header field name");
    }
    field.append(at, length);
    return 0;
  }

  int on_header_value(const char* at, size_t length) {
    if (!charge_header_bytes(length)) return HPE_USER;
    value.append(at, length);
    return 0;
  }

  int on_header_value_complete() {
    headers.add(std::move(field), std::move(value));
    field.clear();
    value.clear();
    return 0;
  }

  bool charge_header_bytes(size_t length) {
    header_bytes += length;
    if (header_bytes <= limits.max_header_bytes) return true;
    fail(431, fmt::format("header fields longer than {} bytes", limits.max_header_bytes));
    return false;
  }

  int on_headers_complete() {
    // This codec speaks plain HTTP/1.x: an Upgrade or CONNECT is answered
    // as an ordinary request (RFC 9110 lets a server ignore Upgrade), so the
    // bytes after it are parsed as the next message.
    parser.upgrade = 0;
    if (parser.http_major != 1) {
      return fail(505,
                  fmt::format("HTTP/{}.{} is not supported", parser.http_major, parser.http_minor));
    }
    std::optional<uint64_t> content_length;
    if (parser.flags & F_CONTENT_LENGTH) content_length = parser.content_length;
    if (kind == Kind::Request) {
      HttpRequestHead head;
      head.method = llhttp_method_name(static_cast<llhttp_method_t>(parser.method));
      head.target = std::move(target);
      head.version_minor = parser.http_minor;
      head.headers = std::move(headers);
      head.keep_alive = llhttp_should_keep_alive(&parser);
      head.content_length = content_length;
      // The head goes to its owner first, so that a refusal (401 before
      // anything else) wins over the size limit; a refusing owner pauses.
      if (callbacks.on_request_head) callbacks.on_request_head(head);
      if (!pause_requested && content_length && *content_length > limits.max_body) {
        return fail(413, fmt::format("request body of {} bytes exceeds the limit of {}",
                                     *content_length, limits.max_body));
      }
      return 0;
    }
    // llhttp sets F_SKIPBODY itself only after this callback returns 1; it
    // is set here first so that keep-alive is judged for a bodiless message.
    bool skip_body = head_response_next && parser.status_code >= 200;
    if (skip_body) {
      head_response_next = false;
      parser.flags |= F_SKIPBODY;
    }
    HttpResponseHead head;
    head.status = parser.status_code;
    head.reason = std::move(status_text);
    head.version_minor = parser.http_minor;
    head.headers = std::move(headers);
    head.keep_alive = llhttp_should_keep_alive(&parser);
    head.content_length = content_length;
    if (callbacks.on_response_head) callbacks.on_response_head(head);
    return skip_body ? 1 : 0;
  }

  int on_body(const char* at, size_t length) {
    body_bytes += length;
    if (kind == Kind::Request && body_bytes > limits.max_body) {
      return fail(413, fmt::format("request body exceeds the limit of {} bytes", limits.max_body));
    }
    if (callbacks.on_body) callbacks.on_body(std::string_view(at, length));
    return 0;
  }

  int on_message_complete() {
    owner.in_message_ = false;
    if (callbacks.on_message_complete) callbacks.on_message_complete();
    return 0;
  }

  HttpParser& owner;
  Kind kind;
  Callbacks callbacks;
  HttpLimits limits;
  llhttp_t parser;

  std::string target;
  std::string status_text;
  std::string field;
  std::string value;
  HttpHeaders headers;
  size_t header_bytes = 0;
  size_t header_count = 0;
  uint64_t body_bytes = 0;

  bool in_callback = false;
  bool pause_requested = false;
  bool paused = false;
  bool head_response_next = false;
};

HttpParser::HttpParser(Kind kind, Callbacks callbacks, HttpLimits limits)
    : impl_(std::make_unique<Impl>(*this, kind, std::move(callbacks), limits)) {}

HttpParser::~HttpParser() = default;

bool HttpParser::feed(const char* data, size_t size, size_t* consumed) {
  if (consumed) *consumed = 0;
  if (error_) return false;
  if (impl_->paused) return true;
  llhttp_errno_t err = llhttp_execute(&impl_->parser, data, size);
  size_t used = size;
  if (err != HPE_OK) used = llhttp_get_error_pos(&impl_->parser) - data;
  if (consumed) *consumed = used;
  if (err == HPE_OK) return true;
  if (err == HPE_PAUSED) {
    impl_->paused = true;
    return true;
  }
  if (!error_) {
    error_ = HttpParseError{400, fmt::format("llhttp: {}: {}", llhttp_errno_name(err),
                                             llhttp_get_error_reason(&impl_->parser))};
  }
  return false;
}

bool HttpParser::finish() {
  if (error_) return false;
  llhttp_errno_t err = llhttp_finish(&impl_->parser);
  if (err == HPE_OK) return true;
  if (err == HPE_PAUSED) {
    impl_->paused = true;
    return true;
  }
  if (!error_) {
    error_ = HttpParseError{400, fmt::format("llhttp: {}: {}", llhttp_errno_name(err),
                                             llhttp_get_error_reason(&impl_->parser))};
  }
  return false;
}

void HttpParser::pause() {
  if (impl_->in_callback) {
    impl_->pause_requested = true;
  } else if (!impl_->paused && !error_) {
    llhttp_pause(&impl_->parser);
    impl_->paused = true;
  }
}

void HttpParser::resume() {
  impl_->pause_requested = false;
  if (!impl_->paused) return;
  impl_->paused = false;
  llhttp_resume(&impl_->parser);
}

void HttpParser::expect_head_response() {
  impl_->head_response_next = true;
}

std::optional<std::string> url_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hex_value(s[i + 1]);
    int lo = hex_value(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi * 16 + lo);
    // An encoded NUL would cut a path short where it meets a C API.
    if (c == '\0') return std::nullopt;
    out.push_back(c);
    i += 2;
  }
  return out;
}

std::string percent_encode(std::string_view s, bool (*keep)(unsigned char)) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (keep(u)) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  return out;
}

std::string url_encode_path(std::string_view s) {
  return percent_encode(s, [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/';
  });
}

std::optional<std::string_view> ParsedTarget::param(std::string_view key) const {
  for (const auto& [k, v] : query) {
    if (k == key) return std::string_view(v);
  }
  return std::nullopt;
}

std::optional<ParsedTarget> parse_target(std::string_view target) {
  ParsedTarget parsed;
  size_t question = target.find('?');
  auto path = url_decode(target.substr(0, question));
  if (!path) return std::nullopt;
  parsed.path = std::move(*path);
  if (question == std::string_view::npos) return parsed;

  // In a query (application/x-www-form-urlencoded) '+' stands for a space.
  auto decode_component = [](std::string_view s) {
    std::string plus_as_space(s);
    std::replace(plus_as_space.begin(), plus_as_space.end(), '+', ' ');
    return url_decode(plus_as_space);
  };
  std::string_view query = target.substr(question + 1);
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    auto key = decode_component(pair.substr(0, eq));
    auto value =
        decode_component(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
    if (!key || !value) return std::nullopt;
    parsed.query.emplace_back(std::move(*key), std::move(*value));
  }
  return parsed;
}

}  // namespace intersync
