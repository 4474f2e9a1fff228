// TCP for the http transport: accepting a peer's connection as a ByteStream
// (core's UvStream over the socket), and a StreamConnector that resolves the
// server's name and connects, trying each address in turn.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>

#include "intersync/byte_stream.h"
#include "intersync/http_client.h"
#include "intersync/result.h"

namespace intersync::http {

// Accepts the pending connection on `server`, with Nagle off and the peer's
// address as its name.
Result<std::shared_ptr<ByteStream>> accept_tcp(uv_loop_t* loop, uv_stream_t* server);

class TcpConnector final : public StreamConnector {
 public:
  TcpConnector(uv_loop_t* loop, std::string host, uint16_t port);

  Result<std::unique_ptr<ConnectAttempt>> connect(Done done) override;
  std::string label() const override { return "http"; }
  std::string endpoint() const override { return endpoint_; }

 private:
  uv_loop_t* loop_;
  std::string host_;  // bare, without IPv6 brackets
  uint16_t port_;
  std::string endpoint_;
};

}  // namespace intersync::http
