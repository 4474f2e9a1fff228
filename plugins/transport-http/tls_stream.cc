// TlsStream: OpenSSL over memory BIOs, driven by the inner stream's events.
// progress() is the one pump: it advances the handshake, then hands
// decrypted bytes to the owner while the owner reads, and sends whatever
// OpenSSL produced on the way (handshake records, alerts, session tickets).
// Reading the inner stream stops whenever the owner stops, so back-pressure
// reaches the socket; bytes already decrypted or still in the input BIO are
// delivered later by a zero-delay timer, never from inside read_resume().
#include "tls_stream.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <climits>
#include <utility>

#include "intersync/log.h"

namespace intersync::http {
namespace {

// A TLS record carries at most 16 KiB of plaintext.
constexpr int kPlainChunk = 16 * 1024;

bool is_ip_literal(const std::string& host) {
  sockaddr_in6 in6{};
  sockaddr_in in{};
  return uv_ip4_addr(host.c_str(), 0, &in) == 0 || uv_ip6_addr(host.c_str(), 0, &in6) == 0;
}

std::string take_output(BIO* bio) {
  std::string out;
  while (size_t pending = BIO_ctrl_pending(bio)) {
    size_t offset = out.size();
    int chunk = static_cast<int>(std::min<size_t>(pending, INT_MAX));
    out.resize(offset + static_cast<size_t>(chunk));
    int n = BIO_read(bio, out.data() + offset, chunk);
    out.resize(offset + static_cast<size_t>(std::max(n, 0)));
    if (n <= 0) break;
  }
  return out;
}

}  // namespace

TlsStream::TlsStream(std::shared_ptr<ByteStream> inner, std::shared_ptr<TlsContext> context)
    : inner_(std::move(inner)), context_(std::move(context)) {}

TlsStream::~TlsStream() {
  close();
  SSL_free(ssl_);  // and the BIOs it owns
}

int TlsStream::init(uv_loop_t* loop) {
  ERR_clear_error();
  ssl_ = SSL_new(context_->get());
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  if (!ssl_ || !in_ || !out_) {
    BIO_free(in_);
    BIO_free(out_);
    in_ = out_ = nullptr;
    return UV_ENOMEM;
  }
  // An empty input BIO means "wait for more", not end of stream: the end
  // comes from the inner stream.
  BIO_set_mem_eof_return(in_, -1);
  SSL_set_bio(ssl_, in_, out_);
  plain_ = std::make_unique<char[]>(kPlainChunk);
  return drain_timer_.init(loop, this, uv_timer_init);
}

Result<std::shared_ptr<TlsStream>> TlsStream::server(uv_loop_t* loop,
                                                     std::shared_ptr<ByteStream> inner,
                                                     std::shared_ptr<TlsContext> context) {
  std::shared_ptr<TlsStream> stream(new TlsStream(std::move(inner), std::move(context)));
  if (int rc = stream->init(loop); rc < 0) {
    return make_error(rc, "cannot set up TLS: " + openssl_reason());
  }
  SSL_set_accept_state(stream->ssl_);
  return stream;
}

Result<std::shared_ptr<TlsStream>> TlsStream::client(uv_loop_t* loop,
                                                     std::shared_ptr<ByteStream> inner,
                                                     std::shared_ptr<TlsContext> context,
                                                     const std::string& host) {
  std::shared_ptr<TlsStream> stream(new TlsStream(std::move(inner), std::move(context)));
  if (int rc = stream->init(loop); rc < 0) {
    return make_error(rc, "cannot set up TLS: " + openssl_reason());
  }
  SSL* ssl = stream->ssl_;
  SSL_set_connect_state(ssl);
  bool ip = is_ip_literal(host);
  // SNI names hosts only; an IP address is never sent as one.
  if (!ip) SSL_set_tlsext_host_name(ssl, host.c_str());
  if (!stream->context_->pinned()) {
    int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str())
                : SSL_set1_host(ssl, host.c_str());
    if (ok != 1) {
      return make_error(-EINVAL, "cannot check the server's certificate against '" + host +
                                     "': " + openssl_reason());
    }
  }
  return stream;
}

int TlsStream::start_inner() {
  if (inner_started_) return 0;
  std::weak_ptr<TlsStream> weak = weak_from_this();
  int rc = inner_->read_start(Events{
      .on_data =
          [weak](std::string_view data) {
            if (auto self = weak.lock()) self->inner_data(data);
          },
      .on_end =
          [weak](Status status) {
            if (auto self = weak.lock()) self->inner_end(std::move(status));
          },
  });
  if (rc < 0) return rc;
  inner_started_ = true;
  inner_reading_ = true;
  return 0;
}

int TlsStream::handshake(std::function<void(Status)> done) {
  if (state_ != State::Handshaking || handshake_done_) return UV_EINVAL;
  if (int rc = start_inner(); rc < 0) return rc;
  // The first flight (ClientHello) goes out now; an answer can only come
  // from the loop, and a failure right here is returned, not called back.
  progress();
  if (state_ != State::Handshaking) return UV_EPROTO;
  handshake_done_ = std::move(done);
  return 0;
}

int TlsStream::read_start(Events events) {
  if (state_ == State::Closed) return UV_EPIPE;
  events_ = std::move(events);
  reading_ = true;
  if (int rc = start_inner(); rc < 0) return rc;
  schedule_drain();
  return 0;
}

void TlsStream::read_stop() {
  reading_ = false;
  update_inner_reading();
}

int TlsStream::read_resume() {
  if (state_ == State::Closed) return UV_EPIPE;
  reading_ = true;
  schedule_drain();
  return 0;
}

void TlsStream::schedule_drain() {
  if (drain_timer_) {
    uv_timer_start(
        drain_timer_.get(),
        [](uv_timer_t* timer) {
          if (auto* stream = static_cast<TlsStream*>(timer->data)) stream->progress();
        },
        0, 0);
  }
}

void TlsStream::inner_data(std::string_view data) {
  if (state_ == State::Closed || state_ == State::Failed) return;
  while (!data.empty()) {
    int chunk = static_cast<int>(std::min<size_t>(data.size(), INT_MAX));
    int n = BIO_write(in_, data.data(), chunk);
    if (n <= 0) {
      fail(Error{UV_ENOMEM, "TLS: cannot buffer input"});
      return;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  progress();
}

void TlsStream::inner_end(Status status) {
  inner_reading_ = false;
  inner_end_ = std::move(status);
  progress();
}

void TlsStream::progress() {
  if (state_ == State::Closed || state_ == State::Failed) return;
  // The owner may drop its reference from inside a callback.
  auto self = shared_from_this();
  if (state_ == State::Handshaking) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl_);
    int error = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
    if (error != SSL_ERROR_NONE && error != SSL_ERROR_WANT_READ) {
      handshake_failed(error);
      return;
    }
    flush();
    if (rc == 1) {
      handshake_complete();
    } else if (inner_end_) {
      std::string why =
          inner_end_->ok() ? "the peer closed the connection" : inner_end_->error().message;
      fail(Error{UV_ECONNRESET, "TLS handshake failed: " + why});
    }
    if (state_ != State::Open) {
      update_inner_reading();
      return;
    }
  }
  while (reading_ && state_ == State::Open && !ended_) {
    ERR_clear_error();
    int n = SSL_read(ssl_, plain_.get(), kPlainChunk);
    if (n > 0) {
      if (events_.on_data) events_.on_data(std::string_view(plain_.get(), static_cast<size_t>(n)));
      continue;
    }
    int error = SSL_get_error(ssl_, n);
    if (error == SSL_ERROR_WANT_READ) {
      // Everything the inner stream delivered has been read.
      if (inner_end_ && inner_end_->ok()) {
        end(Error{UV_ECONNRESET, "the connection ended without a TLS close_notify"});
      } else if (inner_end_) {
        end(*inner_end_);
      }
      break;
    }
    if (error == SSL_ERROR_ZERO_RETURN) {
      end(Status::Ok());
      break;
    }
    end(Error{UV_EPROTO, "TLS: " + openssl_reason()});
  }
  // Reading may have produced records to send (alerts, key updates).
  if (state_ == State::Open) flush();
  update_inner_reading();
}

void TlsStream::handshake_complete() {
  if (const auto& pinned = context_->pinned()) {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (!cert) {
      fail(Error{UV_EPROTO, "TLS handshake failed: the server sent no certificate"});
      return;
    }
    CertFingerprint got{};
    unsigned int length = 0;
    int ok = X509_digest(cert, EVP_sha256(), got.data(), &length);
    X509_free(cert);
    if (ok != 1 || length != got.size() ||
        CRYPTO_memcmp(got.data(), pinned->data(), got.size()) != 0) {
      fail(Error{UV_EPROTO, fmt::format("TLS: the server's certificate is not the pinned one (its "
                                        "SHA-256 fingerprint is {}, the pinned one {})",
                                        format_fingerprint(got), format_fingerprint(*pinned))});
      return;
    }
  }
  state_ = State::Open;
  if (auto done = std::exchange(handshake_done_, nullptr)) done(Status::Ok());
}

void TlsStream::handshake_failed(int ssl_error) {
  unsigned long first = ERR_peek_error();
  if (context_->role() == TlsContext::Role::Server && ERR_GET_LIB(first) == ERR_LIB_SSL &&
      ERR_GET_REASON(first) == SSL_R_HTTP_REQUEST) {
    ERR_clear_error();
    refuse_plain_http();
    return;
  }
  std::string reason;
  long verify = SSL_get_verify_result(ssl_);
  if (context_->role() == TlsContext::Role::Client && verify != X509_V_OK) {
    reason = fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify));
    ERR_clear_error();
  } else if (ssl_error == SSL_ERROR_SYSCALL && first == 0) {
    reason = "unexpected end of the handshake";
  } else {
    reason = openssl_reason();
  }
  // The alert OpenSSL prepared tells the peer why.
  flush();
  fail(Error{UV_EPROTO, "TLS handshake failed: " + reason});
}

// A plain HTTP client on the TLS port gets an HTTP answer it can read,
// rather than bytes it cannot parse (nginx does the same).
void TlsStream::refuse_plain_http() {
  state_ = State::Failed;
  update_inner_reading();
  std::string body =
      "400 Bad Request\nThis port speaks TLS: the client must use TLS too (tls: in the "
      "fileset's http settings).\n";
  std::string response = fmt::format(
      "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
      body.size(), body);
  Error why{UV_EPROTO, "a plain HTTP request on the TLS port; answered 400"};
  std::weak_ptr<TlsStream> weak = weak_from_this();
  int rc = inner_->write(std::move(response), nullptr);
  if (rc == 0) {
    rc = inner_->shutdown([weak, why](int) {
      if (auto self = weak.lock()) self->end(why);
    });
  }
  if (rc < 0) end(why);
}

void TlsStream::fail(Error error) {
  if (state_ == State::Closed) return;
  state_ = State::Failed;
  update_inner_reading();
  if (auto done = std::exchange(handshake_done_, nullptr)) {
    done(std::move(error));
    return;
  }
  end(std::move(error));
}

void TlsStream::end(Status status) {
  if (state_ == State::Closed || std::exchange(ended_, true)) return;
  if (events_.on_end) events_.on_end(std::move(status));
}

void TlsStream::flush() {
  if (BIO_ctrl_pending(out_) == 0) return;
  // A failed write breaks the inner stream, whose read side then says so.
  int rc = inner_->write(take_output(out_), nullptr);
  if (rc < 0) log_debug("http: TLS output to {} was not sent: {}", peer(), uv_strerror(rc));
}

void TlsStream::update_inner_reading() {
  if (state_ == State::Closed || !inner_started_) return;
  bool want = !inner_end_ &&
              (state_ == State::Handshaking || (state_ == State::Open && reading_ && !ended_));
  if (want == inner_reading_) return;
  if (want) {
    inner_reading_ = inner_->read_resume() == 0;
  } else {
    inner_->read_stop();
    inner_reading_ = false;
  }
}

int TlsStream::write(std::string data, Done done) {
  if (state_ == State::Closed || state_ == State::Failed) return UV_EPIPE;
  if (state_ != State::Open) return UV_ENOTCONN;
  if (!data.empty()) {
    if (data.size() > INT_MAX) return UV_E2BIG;
    ERR_clear_error();
    if (SSL_write(ssl_, data.data(), static_cast<int>(data.size())) <= 0) {
      log_info("http: TLS write to {} failed: {}", peer(), openssl_reason());
      return UV_EPROTO;
    }
  }
  return inner_->write(take_output(out_), std::move(done));
}

int TlsStream::shutdown(Done done) {
  if (state_ == State::Closed) return UV_EPIPE;
  if (state_ == State::Open) {
    ERR_clear_error();
    SSL_shutdown(ssl_);  // queues close_notify; the peer's is not waited for
    ERR_clear_error();
    flush();
  }
  return inner_->shutdown(std::move(done));
}

void TlsStream::close() {
  if (state_ == State::Closed) return;
  state_ = State::Closed;
  handshake_done_ = nullptr;
  drain_timer_.close();
  inner_->close();
}

// ---- TlsConnector ----

namespace {

class TlsAttempt : public std::enable_shared_from_this<TlsAttempt> {
 public:
  TlsAttempt(uv_loop_t* loop, std::shared_ptr<TlsContext> context, std::string host,
             std::string label, std::string endpoint, StreamConnector::Done done)
      : loop_(loop),
        context_(std::move(context)),
        host_(std::move(host)),
        label_(std::move(label)),
        endpoint_(std::move(endpoint)),
        done_(std::move(done)) {}

  Status start(StreamConnector& tcp) {
    std::weak_ptr<TlsAttempt> weak = weak_from_this();
    auto attempt = tcp.connect([weak](Result<std::shared_ptr<ByteStream>> stream) {
      if (auto self = weak.lock()) self->connected(std::move(stream));
    });
    if (!attempt) return attempt.error();
    tcp_attempt_ = std::move(*attempt);
    return Status::Ok();
  }

  void cancel() {
    done_ = nullptr;
    tcp_attempt_.reset();
    if (tls_) tls_->close();
    tls_.reset();
  }

 private:
  void connected(Result<std::shared_ptr<ByteStream>> stream) {
    if (!done_) return;
    if (!stream) return finish(stream.error());
    auto tls = TlsStream::client(loop_, *stream, context_, host_);
    if (!tls) {
      (*stream)->close();
      return finish(failure(tls.error()));
    }
    tls_ = *tls;
    std::weak_ptr<TlsAttempt> weak = weak_from_this();
    int rc = tls_->handshake([weak](Status status) {
      if (auto self = weak.lock()) self->handshaken(std::move(status));
    });
    if (rc < 0) {
      tls_->close();
      finish(failure(Error{rc, "TLS handshake failed"}));
    }
  }

  void handshaken(Status status) {
    if (!done_) return;
    if (!status) {
      tls_->close();
      return finish(failure(status.error()));
    }
    finish(std::shared_ptr<ByteStream>(std::move(tls_)));
  }

  Error failure(const Error& error) const {
    return Error{error.code,
                 fmt::format("{}: cannot connect to {}: {}", label_, endpoint_, error.message)};
  }

  // The caller may destroy the attempt from inside `done`.
  void finish(Result<std::shared_ptr<ByteStream>> result) {
    auto self = shared_from_this();
    auto done = std::exchange(done_, nullptr);
    tcp_attempt_.reset();
    tls_.reset();
    if (done) done(std::move(result));
  }

  uv_loop_t* loop_;
  std::shared_ptr<TlsContext> context_;
  std::string host_;
  std::string label_;
  std::string endpoint_;
  StreamConnector::Done done_;
  std::unique_ptr<ConnectAttempt> tcp_attempt_;
  std::shared_ptr<TlsStream> tls_;
};

class TlsAttemptHandle final : public ConnectAttempt {
 public:
  explicit TlsAttemptHandle(std::shared_ptr<TlsAttempt> attempt) : attempt_(std::move(attempt)) {}
  ~TlsAttemptHandle() override { attempt_->cancel(); }

 private:
  std::shared_ptr<TlsAttempt> attempt_;
};

}  // namespace

TlsConnector::TlsConnector(uv_loop_t* loop, std::shared_ptr<StreamConnector> tcp,
                           std::shared_ptr<TlsContext> context, std::string host)
    : loop_(loop), tcp_(std::move(tcp)), context_(std::move(context)), host_(std::move(host)) {}

Result<std::unique_ptr<ConnectAttempt>> TlsConnector::connect(Done done) {
  auto attempt =
      std::make_shared<TlsAttempt>(loop_, context_, host_, label(), endpoint(), std::move(done));
  if (Status started = attempt->start(*tcp_); !started) return started.error();
  return std::unique_ptr<ConnectAttempt>(std::make_unique<TlsAttemptHandle>(std::move(attempt)));
}

}  // namespace intersync::http
