#pragma once
// Fetching image URLs with libcurl, torch-free: http and https only, a byte cap
// checked against Content-Length before the body and while it arrives, a
// connect timeout and a total timeout, at most kMaxRedirects redirects, and
// (unless allowed) no connection to a loopback, private, link-local,
// unique-local or unspecified address. That check is made on the address of
// every socket libcurl opens (CURLOPT_OPENSOCKETFUNCTION): the first request
// and each redirect, on the address actually connected to, so a name that
// resolves differently the second time (DNS rebinding) gains nothing.
#include <sys/socket.h>

#include <cstddef>
#include <string>

namespace mpool::imageio {

/// Redirects followed before a fetch is refused.
inline constexpr long kMaxRedirects = 5;
/// The longest a fetch may take to connect (the total timeout may cut it shorter).
inline constexpr double kConnectTimeoutS = 10.0;

/// What kind of network an address belongs to, for the private-URL check.
enum class AddressKind {
  kPublic,
  kLoopback,        ///< 127.0.0.0/8, ::1
  kPrivate,         ///< 10/8, 172.16/12, 192.168/16 (RFC 1918), 100.64/10 (shared, RFC 6598)
  kLinkLocal,       ///< 169.254/16, fe80::/10
  kUniqueLocal,     ///< fc00::/7
  kUnspecified,     ///< 0.0.0.0/8, ::
  kMulticast,       ///< 224/4, 255.255.255.255, ff00::/8
  kUnsupported,     ///< not IPv4 or IPv6
};
/// "a loopback address", "a private address", ... for messages.
const char* address_kind_text(AddressKind kind);
/// The kind of `addr`; IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible
/// (::a.b.c.d) IPv6 addresses are classified as the IPv4 address they carry.
AddressKind classify_address(const sockaddr* addr, socklen_t len);
/// "127.0.0.1:8080", "[::1]:443".
std::string address_text(const sockaddr* addr, socklen_t len);

struct FetchOptions {
  double timeout_s = 10.0;  ///< whole transfer, redirects included (> 0, finite)
  std::size_t max_bytes = std::size_t{64} << 20;
  bool allow_private = false;  ///< connect to the kinds other than kPublic
};

/// The body of `url` (http or https). Every failure is Error(kInvalidInput)
/// whose message starts with `url`: another scheme, a refused address, too
/// many redirects, an HTTP error status, a body over max_bytes, a timeout.
std::string fetch_url(const std::string& url, const FetchOptions& options);

/// Tests only: connections to the endpoint "ip:port" (as address_text writes
/// it) pass the private-address check even when allow_private is false, so a
/// test can serve an "allowed" first hop on loopback and check that a redirect
/// from it to another loopback endpoint is refused. An empty string clears.
void set_test_allowed_endpoint(const std::string& endpoint);

}  // namespace mpool::imageio
