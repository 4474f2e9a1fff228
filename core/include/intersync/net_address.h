// Socket address formatting for logs and error messages, and the host
// spellings configuration allows, shared by the transports and core.
#pragma once

#include <uv.h>

#include <string>
#include <string_view>

namespace intersync {

// "127.0.0.1:370" or "[::1]:370".
inline std::string format_endpoint(std::string_view host, unsigned port) {
  if (host.find(':') != std::string_view::npos) {
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

inline std::string format_address(const sockaddr* addr) {
  char ip[64] = "?";
  unsigned port = 0;
  if (addr->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    uv_ip4_name(in, ip, sizeof ip);
    port = ntohs(in->sin_port);
  } else if (addr->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    uv_ip6_name(in6, ip, sizeof ip);
    port = ntohs(in6->sin6_port);
  }
  return format_endpoint(ip, port);
}

// A host as written in configuration may carry IPv6 brackets ("[::1]");
// resolvers and uv_ip6_addr want it bare.
inline std::string strip_brackets(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return std::string(host.substr(1, host.size() - 2));
  }
  return std::string(host);
}

}  // namespace intersync
