// Tests for core's HTTP/1.1 codec: request and response parsing (whole,
// split byte by byte, chunked, pipelined with pause/resume), the limits that
// stop a hostile peer before anything is buffered, the URL helpers and the
// head serializers.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "intersync/http_codec.h"

using namespace intersync;

namespace {

// Records everything a parser reports.
struct Recorder {
  std::vector<HttpRequestHead> requests;
  std::vector<HttpResponseHead> responses;
  std::vector<std::string> bodies;  // one per message, filled by on_body
  int completed = 0;

  HttpParser::Callbacks callbacks() {
    HttpParser::Callbacks cb;
    cb.on_request_head = [this](HttpRequestHead& head) {
      requests.push_back(head);
      bodies.emplace_back();
    };
    cb.on_response_head = [this](HttpResponseHead& head) {
      responses.push_back(head);
      bodies.emplace_back();
    };
    cb.on_body = [this](std::string_view piece) { bodies.back().append(piece); };
    cb.on_message_complete = [this] { ++completed; };
    return cb;
  }
};

bool feed_all(HttpParser& parser, std::string_view data) {
  size_t consumed = 0;
  bool ok = parser.feed(data.data(), data.size(), &consumed);
  if (ok) REQUIRE(consumed == data.size());
  return ok;
}

bool feed_bytewise(HttpParser& parser, std::string_view data) {
  for (char c : data) {
    size_t consumed = 0;
    if (!parser.feed(&c, 1, &consumed)) return false;
    REQUIRE(consumed == 1);
  }
  return true;
}

}  // namespace

TEST_CASE("a simple GET request is parsed") {
  Recorder rec;
  HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
  REQUIRE(feed_all(parser,
                   "GET /cgi-bin/intersync/docs/info?x=1 HTTP/1.1\r\n"
                   "Host: example\r\n"
                   "X-Empty:\r\n"
                   "Accept: */*\r\n\r\n"));
  REQUIRE(rec.requests.size() == 1);
  REQUIRE(rec.completed == 1);
  const auto& head = rec.requests[0];
  CHECK(head.method == "GET");
  CHECK(head.target == "/cgi-bin/intersync/docs/info?x=1");
  CHECK(head.version_minor == 1);
  CHECK(head.keep_alive);
  CHECK_FALSE(head.content_length);
  CHECK(head.headers.all().size() == 3);
  CHECK(head.headers.get("host") == "example");
  CHECK(head.headers.get("x-empty") == "");
  CHECK_FALSE(head.headers.get("Cookie"));
  CHECK(rec.bodies[0].empty());
  CHECK_FALSE(parser.in_message());
  CHECK_FALSE(parser.error());
}

TEST_CASE("a POST body split over many feeds arrives whole") {
  Recorder rec;
  HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
  std::string body = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string message =
      "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n\r\n" + body;
  REQUIRE(feed_bytewise(parser, message.substr(0, message.size() - 1)));
  CHECK(parser.in_message());
  CHECK(rec.completed == 0);
  REQUIRE(feed_bytewise(parser, message.substr(message.size() - 1)));
  REQUIRE(rec.requests.size() == 1);
  CHECK(rec.requests[0].method == "POST");
  CHECK(rec.requests[0].content_length == body.size());
  CHECK(rec.bodies[0] == body);
  CHECK(rec.completed == 1);
}

TEST_CASE("a chunked request body is de-chunked") {
  Recorder rec;
  HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
  REQUIRE(feed_all(parser,
                   "POST /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "5\r\nhello\r\n"
                   "7;ext=1\r\n, world\r\n"
                   "0\r\n\r\n"));
  REQUIRE(rec.completed == 1);
  CHECK_FALSE(rec.requests[0].content_length);
  CHECK(rec.bodies[0] == "hello, world");
}

TEST_CASE("pipelined requests are handled one at a time with pause/resume") {
  Recorder rec;
  HttpParser* self = nullptr;
  auto cb = rec.callbacks();
  auto count = cb.on_message_complete;
  cb.on_message_complete = [&] {
    count();
    self->pause();
  };
  HttpParser parser(HttpParser::Kind::Request, cb);
  self = &parser;
  std::string first = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  std::string second = "GET /b HTTP/1.1\r\n\r\n";
  std::string wire = first + second;

  size_t consumed = 0;
  REQUIRE(parser.feed(wire.data(), wire.size(), &consumed));
  CHECK(consumed == first.size());
  CHECK(rec.completed == 1);

  // While paused nothing is consumed.
  size_t again = 99;
  REQUIRE(parser.feed(wire.data() + consumed, wire.size() - consumed, &again));
  CHECK(again == 0);

  parser.resume();
  size_t rest = 0;
  REQUIRE(parser.feed(wire.data() + consumed, wire.size() - consumed, &rest));
  CHECK(rest == second.size());
  REQUIRE(rec.completed == 2);
  CHECK(rec.requests[0].target == "/a");
  CHECK(rec.bodies[0] == "abc");
  CHECK(rec.requests[1].target == "/b");
}

TEST_CASE("pause from on_body stops at the end of that piece") {
  HttpParser* self = nullptr;
  std::string body;
  HttpParser::Callbacks cb;
  cb.on_body = [&](std::string_view piece) {
    body.append(piece);
    self->pause();
  };
  HttpParser parser(HttpParser::Kind::Request, cb);
  self = &parser;
  std::string head = "POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\n";
  size_t consumed = 0;
  REQUIRE(parser.feed(head.data(), head.size(), &consumed));
  CHECK(consumed == head.size());
  REQUIRE(parser.feed("abc", 3, &consumed));
  CHECK(consumed == 3);
  CHECK(body == "abc");
  parser.resume();
  REQUIRE(parser.feed("def", 3, &consumed));
  CHECK(consumed == 3);
  CHECK(body == "abcdef");
}

TEST_CASE("keep-alive follows the version and the Connection header") {
  auto keep_alive = [](const std::string& wire) {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
    REQUIRE(feed_all(parser, wire));
    REQUIRE(rec.requests.size() == 1);
    return rec.requests[0].keep_alive;
  };
  CHECK(keep_alive("GET / HTTP/1.1\r\n\r\n"));
  CHECK_FALSE(keep_alive("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
  CHECK_FALSE(keep_alive("GET / HTTP/1.0\r\n\r\n"));
  CHECK(keep_alive("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));

  Recorder rec;
  HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
  REQUIRE(feed_all(parser, "GET / HTTP/1.0\r\n\r\n"));
  CHECK(rec.requests[0].version_minor == 0);
}

TEST_CASE("malformed input stops the parser with 400") {
  auto error_of = [](const std::string& wire) {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Request, rec.callbacks());
    CHECK_FALSE(parser.feed(wire.data(), wire.size()));
    REQUIRE(parser.error());
    // A broken parser ignores whatever follows.
    CHECK_FALSE(parser.feed("GET / HTTP/1.1\r\n\r\n", 18));
    CHECK(rec.completed == 0);
    return *parser.error();
  };
  SECTION("request line") {
    auto error = error_of("GARBAGE\r\n\r\n");
    CHECK(error.status == 400);
    CHECK(error.reason.rfind("llhttp: HPE_", 0) == 0);
  }
  SECTION("header name") {
    auto error = error_of("GET / HTTP/1.1\r\nBad(Header): x\r\n\r\n");
    CHECK(error.status == 400);
    CHECK(error.reason.find("HPE_INVALID_HEADER_TOKEN") != std::string::npos);
  }
  SECTION("space in a header name") {
    CHECK(error_of("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").status == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost : x\r\n\r\n").status == 400);
  }
  SECTION("header value") {
    auto error = error_of(std::string("GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n"));
    CHECK(error.status == 400);
  }
  SECTION("both Content-Length and chunked") {
    auto error =
        error_of("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    CHECK(error.status == 400);
  }
  SECTION("unsupported version") {
    auto error = error_of("GET / HTTP/2.0\r\n\r\n");
    CHECK((error.status == 505 || error.status == 400));
  }
}

TEST_CASE("limits stop the parser before buffering") {
  HttpLimits limits;
  limits.max_target = 64;
  limits.max_header_bytes = 256;
  limits.max_headers = 5;
  limits.max_body = 1000;
  auto error_of = [&](const std::string& wire) -> std::optional<HttpParseError> {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Request, rec.callbacks(), limits);
    if (feed_bytewise(parser, wire)) return std::nullopt;
    CHECK(rec.completed == 0);
    return parser.error();
  };

  SECTION("target") {
    CHECK_FALSE(error_of("GET /" + std::string(63, 'a') + " HTTP/1.1\r\n\r\n"));
    auto error = error_of("GET /" + std::string(64, 'a') + " HTTP/1.1\r\n\r\n");
    REQUIRE(error);
    CHECK(error->status == 414);
  }
  SECTION("header count") {
    std::string wire = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < 5; ++i) wire += "X-" + std::to_string(i) + ": v\r\n";
    CHECK_FALSE(error_of(wire + "\r\n"));
    auto error = error_of(wire + "X-5: v\r\n\r\n");
    REQUIRE(error);
    CHECK(error->status == 431);
  }
  SECTION("header bytes") {
    auto error = error_of("GET / HTTP/1.1\r\nX: " + std::string(300, 'v') + "\r\n\r\n");
    REQUIRE(error);
    CHECK(error->status == 431);
  }
  SECTION("Content-Length") {
    CHECK_FALSE(
        error_of("POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'b')));
    auto error = error_of("POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
    REQUIRE(error);
    CHECK(error->status == 413);
  }
  SECTION("chunked body") {
    std::string wire = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 3; ++i) wire += "190\r\n" + std::string(400, 'c') + "\r\n";
    auto error = error_of(wire);
    REQUIRE(error);
    CHECK(error->status == 413);
  }
}

TEST_CASE("responses are parsed, including HEAD and close-delimited bodies") {
  SECTION("Content-Length body, then a HEAD response, then another") {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Response, rec.callbacks());
    REQUIRE(feed_all(parser, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
    REQUIRE(rec.completed == 1);
    CHECK(rec.responses[0].status == 200);
    CHECK(rec.responses[0].reason == "OK");
    CHECK(rec.responses[0].content_length == 5);
    CHECK(rec.responses[0].keep_alive);
    CHECK(rec.bodies[0] == "hello");

    parser.expect_head_response();
    REQUIRE(feed_all(parser, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"));
    REQUIRE(rec.completed == 2);
    CHECK(rec.responses[1].content_length == 100);
    CHECK(rec.responses[1].keep_alive);
    CHECK(rec.bodies[1].empty());

    REQUIRE(feed_all(parser, "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"));
    REQUIRE(rec.completed == 3);
    CHECK(rec.responses[2].status == 404);
    CHECK(rec.bodies[2] == "no");
  }
  SECTION("a body delimited by connection close") {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Response, rec.callbacks());
    REQUIRE(feed_all(parser, "HTTP/1.1 200 OK\r\nX: y\r\n\r\nsome "));
    REQUIRE(feed_all(parser, "bytes"));
    CHECK(rec.completed == 0);
    CHECK_FALSE(rec.responses[0].keep_alive);
    CHECK(parser.finish());
    CHECK(rec.completed == 1);
    CHECK(rec.bodies[0] == "some bytes");
  }
  SECTION("a response cut short") {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Response, rec.callbacks());
    REQUIRE(feed_all(parser, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"));
    CHECK_FALSE(parser.finish());
    REQUIRE(parser.error());
    CHECK(parser.error()->reason.find("HPE_INVALID_EOF_STATE") != std::string::npos);
  }
  SECTION("chunked, HTTP/1.0 and Connection: close") {
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Response, rec.callbacks());
    REQUIRE(feed_all(parser,
                     "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"));
    REQUIRE(rec.completed == 1);
    CHECK(rec.responses[0].status == 201);
    CHECK_FALSE(rec.responses[0].keep_alive);
    CHECK(rec.bodies[0] == "abc");
  }
  SECTION("a response body is not limited by max_body") {
    HttpLimits limits;
    limits.max_body = 4;
    Recorder rec;
    HttpParser parser(HttpParser::Kind::Response, rec.callbacks(), limits);
    REQUIRE(feed_all(parser, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678"));
    CHECK(rec.bodies[0] == "12345678");
  }
}

TEST_CASE("url_decode and url_encode_path") {
  CHECK(url_decode("a%2Fb%20c") == "a/b c");
  CHECK(url_decode("a+b") == "a+b");
  CHECK(url_decode("%e2%82%AC") == "\xe2\x82\xac");
  CHECK_FALSE(url_decode("%00"));
  CHECK_FALSE(url_decode("a%0"));
  CHECK_FALSE(url_decode("a%"));
  CHECK_FALSE(url_decode("%zz"));
  CHECK_FALSE(url_decode("%4g"));

  CHECK(url_encode_path("/dir/a b+c?%#\xe2\x82\xac~._-") == "/dir/a%20b%2Bc%3F%25%23%E2%82%AC~._-");
  // Any other choice of bytes to keep: here, all but spaces and 8-bit bytes.
  CHECK(percent_encode("a b%20\xff/?", [](unsigned char c) { return c != ' ' && c < 0x80; }) ==
        "a%20b%20%FF/?");
  CHECK(percent_encode("", [](unsigned char) { return false; }).empty());
  std::string all;
  for (int c = 1; c < 256; ++c) all.push_back(static_cast<char>(c));
  CHECK(url_decode(url_encode_path(all)) == all);
}

TEST_CASE("parse_target splits the path and the query") {
  auto t = parse_target("/cgi-bin/intersync/my%20docs/kml?since=12&wait=30&q=a+b%2B&flag&&x=");
  REQUIRE(t);
  CHECK(t->path == "/cgi-bin/intersync/my docs/kml");
  REQUIRE(t->query.size() == 5);
  CHECK(t->param("since") == "12");
  CHECK(t->param("wait") == "30");
  CHECK(t->param("q") == "a b+");
  CHECK(t->param("flag") == "");
  CHECK(t->param("x") == "");
  CHECK_FALSE(t->param("missing"));

  auto plain = parse_target("/a+b");
  REQUIRE(plain);
  CHECK(plain->path == "/a+b");
  CHECK(plain->query.empty());

  CHECK_FALSE(parse_target("/a%00b"));
  CHECK_FALSE(parse_target("/a?x=%0"));
  CHECK_FALSE(parse_target("/a?x%zz=1"));
}

TEST_CASE("heads serialize with framing headers") {
  HttpRequestHead req;
  req.method = "POST";
  req.target = "/cgi-bin/intersync/docs/reintegrate";
  req.headers.add("Host", "server:370");
  req.content_length = 42;
  CHECK(http_serialize(req) ==
        "POST /cgi-bin/intersync/docs/reintegrate HTTP/1.1\r\nHost: server:370\r\n"
        "Content-Length: 42\r\n\r\n");

  req.keep_alive = false;
  req.headers.add("Connection", "keep-alive");
  req.content_length.reset();
  CHECK(http_serialize(req) ==
        "POST /cgi-bin/intersync/docs/reintegrate HTTP/1.1\r\nHost: server:370\r\n"
        "Connection: close\r\n\r\n");

  HttpResponseHead resp;
  resp.status = 404;
  resp.content_length = 0;
  CHECK(http_serialize(resp) == "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");

  resp.status = 200;
  resp.reason = "Fine";
  resp.headers.add("Content-Length", "7");
  resp.content_length = 7;
  resp.headers.add("X-Evil", "a\r\nSet-Cookie: b");
  CHECK(http_serialize(resp) ==
        "HTTP/1.1 200 Fine\r\nContent-Length: 7\r\nX-Evil: a  Set-Cookie: b\r\n\r\n");

  // A serialized head parses back to the same fields.
  Recorder rec;
  HttpParser parser(HttpParser::Kind::Response, rec.callbacks());
  std::string wire = http_serialize(resp) + "1234567";
  REQUIRE(feed_all(parser, wire));
  REQUIRE(rec.completed == 1);
  CHECK(rec.responses[0].reason == "Fine");
  CHECK(rec.responses[0].headers.get("x-evil") == "a  Set-Cookie: b");
}

TEST_CASE("HttpHeaders::set replaces every field of that name") {
  HttpHeaders h;
  h.add("A", "1");
  h.add("B", "2");
  h.add("a", "3");
  h.set("A", "4");
  REQUIRE(h.all().size() == 2);
  CHECK(h.all()[0].second == "4");
  CHECK(h.all()[1].first == "B");
  h.set("C", "5");
  CHECK(h.get("c") == "5");
  CHECK(http_reason_phrase(431) == std::string("Request Header Fields Too Large"));
}
