// The TLS settings of one http transport, loaded once into an OpenSSL
// SSL_CTX that every connection shares: a server's certificate chain and
// key, or a client's way of trusting the server (a CA file and the server's
// name, or a pinned certificate fingerprint). TLS 1.2 is the minimum and
// renegotiation is off.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "intersync/result.h"

namespace intersync::http {

// SHA-256 of a certificate's DER encoding.
using CertFingerprint = std::array<unsigned char, 32>;

// Parses 64 hex digits, optionally in colon-separated pairs as
// `openssl x509 -fingerprint -sha256` prints them.
std::optional<CertFingerprint> parse_fingerprint(std::string_view text);
std::string format_fingerprint(const CertFingerprint& fingerprint);

// The reasons OpenSSL queued for the last failure, oldest first (which is
// the cause), as "PEM routines: no start line"; clears the queue.
std::string openssl_reason();

class TlsContext {
 public:
  enum class Role { Server, Client };

  // Errors name the file and OpenSSL's reason.
  static Result<std::shared_ptr<TlsContext>> server(const std::string& cert_file,
                                                    const std::string& key_file);
  // Verifies the server's chain against `ca_file` (the system's CAs when
  // empty) and its name against the host connected to.
  static Result<std::shared_ptr<TlsContext>> client_ca(const std::string& ca_file);
  // Accepts exactly the server certificate with this fingerprint.
  static Result<std::shared_ptr<TlsContext>> client_pinned(CertFingerprint fingerprint);

  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  SSL_CTX* get() const { return ctx_; }
  Role role() const { return role_; }
  const std::optional<CertFingerprint>& pinned() const { return pinned_; }

 private:
  TlsContext(SSL_CTX* ctx, Role role) : ctx_(ctx), role_(role) {}
  static Result<std::shared_ptr<TlsContext>> create(Role role);

  SSL_CTX* ctx_;
  Role role_;
  std::optional<CertFingerprint> pinned_;
};

}  // namespace intersync::http
