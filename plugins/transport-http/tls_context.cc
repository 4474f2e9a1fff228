// Loading TLS settings into an SSL_CTX. Everything that can fail because of
// a file (missing, unreadable, not PEM, a key that does not match its
// certificate) fails here, when the configuration is loaded, and says which
// file and why, rather than on the first connection.
#include "tls_context.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <cctype>
#include <cstring>

#include "intersync/log.h"

namespace intersync::http {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::optional<CertFingerprint> parse_fingerprint(std::string_view text) {
  std::string hex;
  for (size_t i = 0; i < text.size(); ++i) {
    // Colons may separate pairs only.
    if (text[i] == ':' && hex.size() % 2 == 0 && !hex.empty() && i + 1 < text.size()) continue;
    hex.push_back(text[i]);
  }
  if (hex.size() != 64) return std::nullopt;
  CertFingerprint out{};
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = hex_value(hex[2 * i]);
    int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  return out;
}

std::string format_fingerprint(const CertFingerprint& fingerprint) {
  std::string out;
  for (unsigned char byte : fingerprint) out += fmt::format("{:02x}", byte);
  return out;
}

std::string openssl_reason() {
  unsigned long first = ERR_get_error();
  ERR_clear_error();
  if (first == 0) return "unknown error";
  // A failed system call (a missing file) carries the errno.
  if (ERR_SYSTEM_ERROR(first)) return std::strerror(static_cast<int>(ERR_GET_REASON(first)));
  const char* lib = ERR_lib_error_string(first);
  const char* reason = ERR_reason_error_string(first);
  std::string text = reason ? reason : fmt::format("error {:#x}", first);
  return lib ? fmt::format("{}: {}", lib, text) : text;
}

Result<std::shared_ptr<TlsContext>> TlsContext::create(Role role) {
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(role == Role::Server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return make_error(-ENOMEM, "cannot create a TLS context: " + openssl_reason());
  std::shared_ptr<TlsContext> context(new TlsContext(ctx, role));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // Bodies are written in large pieces; each SSL_write takes all of it.
  SSL_CTX_clear_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
  return context;
}

TlsContext::~TlsContext() {
  SSL_CTX_free(ctx_);
}

Result<std::shared_ptr<TlsContext>> TlsContext::server(const std::string& cert_file,
                                                       const std::string& key_file) {
  auto context = create(Role::Server);
  if (!context) return context;
  SSL_CTX* ctx = (*context)->get();
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return make_error(-EINVAL, fmt::format("cannot load the TLS certificate {}: {}", cert_file,
                                           openssl_reason()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return make_error(-EINVAL,
                      fmt::format("cannot load the TLS key {}: {}", key_file, openssl_reason()));
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return make_error(
        -EINVAL, fmt::format("the TLS key {} does not belong to the certificate {}: {}", key_file,
                             cert_file, openssl_reason()));
  }
  struct stat st {};
  if (::stat(key_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    log_warn("http: the TLS key {} can be read by other users (mode {:o}); chmod 600 it", key_file,
             st.st_mode & 0777);
  }
  return context;
}

Result<std::shared_ptr<TlsContext>> TlsContext::client_ca(const std::string& ca_file) {
  auto context = create(Role::Client);
  if (!context) return context;
  SSL_CTX* ctx = (*context)->get();
  int ok = ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx)
                           : SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr);
  if (ok != 1) {
    return make_error(
        -EINVAL, fmt::format("cannot load the TLS CA file {}: {}",
                             ca_file.empty() ? "(system default)" : ca_file, openssl_reason()));
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  return context;
}

Result<std::shared_ptr<TlsContext>> TlsContext::client_pinned(CertFingerprint fingerprint) {
  auto context = create(Role::Client);
  if (!context) return context;
  // The chain means nothing here: the certificate itself is checked against
  // the pin once the handshake is through, before any request is sent.
  SSL_CTX_set_verify((*context)->get(), SSL_VERIFY_NONE, nullptr);
  (*context)->pinned_ = fingerprint;
  return context;
}

}  // namespace intersync::http
