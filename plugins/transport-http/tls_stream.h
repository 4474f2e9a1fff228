// TLS as a ByteStream wrapping a ByteStream: OpenSSL works on two memory
// BIOs, ciphertext from the inner stream goes into one, what OpenSSL wants
// sent comes out of the other and is written to the inner stream, and the
// owner reads and writes plaintext. A server stream is handed to core's
// HTTP connection at once and handshakes as it reads; a client stream is
// handed over only after its handshake, and the server's certificate
// checks, succeeded (TlsConnector).
#pragma once

#include <openssl/ssl.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "intersync/byte_stream.h"
#include "intersync/http_client.h"
#include "intersync/uv_handle.h"
#include "tls_context.h"

namespace intersync::http {

class TlsStream final : public ByteStream, public std::enable_shared_from_this<TlsStream> {
 public:
  // A server side over an accepted stream that is not reading yet.
  static Result<std::shared_ptr<TlsStream>> server(uv_loop_t* loop,
                                                   std::shared_ptr<ByteStream> inner,
                                                   std::shared_ptr<TlsContext> context);
  // A client side over a connected stream; `host` is sent as SNI and, with
  // a CA context, is what the certificate must name (a DNS name or an IP).
  static Result<std::shared_ptr<TlsStream>> client(uv_loop_t* loop,
                                                   std::shared_ptr<ByteStream> inner,
                                                   std::shared_ptr<TlsContext> context,
                                                   const std::string& host);
  ~TlsStream() override;
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // Client: runs the handshake; `done` runs once from a loop callback, Ok
  // when the stream may carry data, or with what failed (a certificate the
  // CA does not vouch for, a fingerprint that is not the pinned one, ...).
  int handshake(std::function<void(Status)> done);

  int read_start(Events events) override;
  void read_stop() override;
  int read_resume() override;
  int write(std::string data, Done done) override;
  int shutdown(Done done) override;
  void close() override;
  std::string peer() const override { return inner_->peer(); }

 private:
  enum class State { Handshaking, Open, Failed, Closed };

  TlsStream(std::shared_ptr<ByteStream> inner, std::shared_ptr<TlsContext> context);
  int init(uv_loop_t* loop);
  int start_inner();
  void inner_data(std::string_view data);
  void inner_end(Status status);
  void progress();
  void handshake_complete();
  void handshake_failed(int ssl_error);
  void refuse_plain_http();
  void fail(Error error);
  void end(Status status);
  void flush();
  void update_inner_reading();
  void schedule_drain();

  std::shared_ptr<ByteStream> inner_;
  std::shared_ptr<TlsContext> context_;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;              // ciphertext from the peer, read by OpenSSL
  BIO* out_ = nullptr;             // ciphertext for the peer, written by OpenSSL
  std::unique_ptr<char[]> plain_;  // decrypted bytes on their way to the owner
  UvHandle<uv_timer_t> drain_timer_;
  State state_ = State::Handshaking;
  Events events_;
  std::function<void(Status)> handshake_done_;
  std::optional<Status> inner_end_;  // the inner stream ended; told once its bytes are read
  bool inner_started_ = false;
  bool inner_reading_ = false;
  bool reading_ = false;  // the owner wants on_data
  bool ended_ = false;    // on_end was delivered
};

// Opens TLS streams: a TCP connection, then the handshake and the checks.
class TlsConnector final : public StreamConnector {
 public:
  TlsConnector(uv_loop_t* loop, std::shared_ptr<StreamConnector> tcp,
               std::shared_ptr<TlsContext> context, std::string host);

  Result<std::unique_ptr<ConnectAttempt>> connect(Done done) override;
  std::string label() const override { return tcp_->label(); }
  std::string endpoint() const override { return tcp_->endpoint(); }

 private:
  uv_loop_t* loop_;
  std::shared_ptr<StreamConnector> tcp_;
  std::shared_ptr<TlsContext> context_;
  std::string host_;
};

}  // namespace intersync::http
