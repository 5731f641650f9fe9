#include "mpool/imageio/fetch.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <strings.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>

#include "mpool/base/error.h"

namespace mpool::imageio {
namespace {

void curl_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

AddressKind classify_v4(std::uint32_t a) {  // host byte order
  const auto in = [a](std::uint32_t net, int bits) { return (a >> (32 - bits)) == (net >> (32 - bits)); };
  if (in(0x7F000000, 8)) return AddressKind::kLoopback;
  if (in(0x0A000000, 8) || in(0xAC100000, 12) || in(0xC0A80000, 16) || in(0x64400000, 10))
    return AddressKind::kPrivate;
  if (in(0xA9FE0000, 16)) return AddressKind::kLinkLocal;
  if (in(0x00000000, 8)) return AddressKind::kUnspecified;
  if (in(0xE0000000, 4) || a == 0xFFFFFFFF) return AddressKind::kMulticast;
  return AddressKind::kPublic;
}

std::mutex test_endpoint_mu;
std::string test_endpoint;  // guarded by test_endpoint_mu

bool test_allowed(const std::string& endpoint) {
  std::lock_guard lock(test_endpoint_mu);
  return !test_endpoint.empty() && endpoint == test_endpoint;
}

struct Transfer {
  std::string body;
  std::size_t max_bytes = 0;
  bool too_large = false;
  bool allow_private = false;
  std::string refused;  // the first address refused, with why
};

std::size_t on_data(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t n = size * count;
  if (n > t->max_bytes - t->body.size()) {
    t->too_large = true;
    return 0;  // aborts the transfer
  }
  t->body.append(data, n);
  return n;
}

// Every socket libcurl opens for the transfer, the first request's and each
// redirect's, comes through here with the address it will connect to.
curl_socket_t open_socket(void* user, curlsocktype purpose, curl_sockaddr* address) {
  auto* t = static_cast<Transfer*>(user);
  if (purpose == CURLSOCKTYPE_IPCXN && !t->allow_private) {
    const auto* sa = &address->addr;
    const AddressKind kind = classify_address(sa, address->addrlen);
    const std::string where = address_text(sa, address->addrlen);
    if (kind != AddressKind::kPublic && !test_allowed(where)) {
      if (t->refused.empty())
        t->refused = "refused to connect to " + where + ", " + address_kind_text(kind) +
                     " (the pool was made with allow_private_urls=False)";
      return CURL_SOCKET_BAD;
    }
  }
  return ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

long to_ms(double seconds) {
  // libcurl takes whole milliseconds in a long, and 0 means no limit.
  const double ms = std::ceil(seconds * 1000.0);
  return ms < 1.0 ? 1L : ms > 1e9 ? 1000000000L : static_cast<long>(ms);
}

bool http_scheme(const std::string& url) {
  auto starts = [&](const char* p) { return url.size() >= std::strlen(p) && strncasecmp(url.c_str(), p, std::strlen(p)) == 0; };
  return starts("http://") || starts("https://");
}

}  // namespace

const char* address_kind_text(AddressKind kind) {
  switch (kind) {
    case AddressKind::kPublic: return "a public address";
    case AddressKind::kLoopback: return "a loopback address";
    case AddressKind::kPrivate: return "a private address";
    case AddressKind::kLinkLocal: return "a link-local address";
    case AddressKind::kUniqueLocal: return "a unique-local address";
    case AddressKind::kUnspecified: return "an unspecified address";
    case AddressKind::kMulticast: return "a multicast or broadcast address";
    case AddressKind::kUnsupported: return "not an IPv4 or IPv6 address";
  }
  return "an unknown address";
}

AddressKind classify_address(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr) return AddressKind::kUnsupported;
  if (addr->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in v4;
    std::memcpy(&v4, addr, sizeof v4);
    return classify_v4(ntohl(v4.sin_addr.s_addr));
  }
  if (addr->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 v6;
    std::memcpy(&v6, addr, sizeof v6);
    const std::uint8_t* b = v6.sin6_addr.s6_addr;
    static const std::uint8_t kZero[16] = {};
    const bool first10_zero = std::memcmp(b, kZero, 10) == 0;
    if (std::memcmp(b, kZero, 16) == 0) return AddressKind::kUnspecified;
    if (std::memcmp(b, kZero, 15) == 0 && b[15] == 1) return AddressKind::kLoopback;
    const std::uint32_t tail = (std::uint32_t{b[12]} << 24) | (std::uint32_t{b[13]} << 16) |
                               (std::uint32_t{b[14]} << 8) | b[15];
    if (first10_zero && b[10] == 0xFF && b[11] == 0xFF) return classify_v4(tail);  // ::ffff:a.b.c.d
    if (first10_zero && b[10] == 0 && b[11] == 0) return classify_v4(tail);        // ::a.b.c.d (deprecated)
    if ((b[0] & 0xFE) == 0xFC) return AddressKind::kUniqueLocal;                    // fc00::/7
    if (b[0] == 0xFE && (b[1] & 0xC0) == 0x80) return AddressKind::kLinkLocal;      // fe80::/10
    if (b[0] == 0xFF) return AddressKind::kMulticast;                               // ff00::/8
    return AddressKind::kPublic;
  }
  return AddressKind::kUnsupported;
}

std::string address_text(const sockaddr* addr, socklen_t len) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (addr != nullptr && addr->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in v4;
    std::memcpy(&v4, addr, sizeof v4);
    inet_ntop(AF_INET, &v4.sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(v4.sin_port));
  }
  if (addr != nullptr && addr->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 v6;
    std::memcpy(&v6, addr, sizeof v6);
    inet_ntop(AF_INET6, &v6.sin6_addr, buf, sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(v6.sin6_port));
  }
  return "(address family " + std::to_string(addr ? addr->sa_family : -1) + ")";
}

void set_test_allowed_endpoint(const std::string& endpoint) {
  std::lock_guard lock(test_endpoint_mu);
  test_endpoint = endpoint;
}

std::string fetch_url(const std::string& url, const FetchOptions& options) {
  check(http_scheme(url), ErrorCode::kInvalidInput, url + ": only http and https URLs are fetched");
  check(options.timeout_s > 0 && !std::isnan(options.timeout_s), ErrorCode::kInvalidInput,
        url + ": the fetch timeout must be > 0 seconds");
  check(options.max_bytes > 0, ErrorCode::kInvalidInput, url + ": the byte cap must be > 0");
  curl_init_once();
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  check(curl != nullptr, ErrorCode::kInternal, "libcurl could not start a transfer");
  CURL* c = curl.get();
  Transfer t;
  t.max_bytes = options.max_bytes;
  t.allow_private = options.allow_private;
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, kMaxRedirects);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM in a threaded process
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, to_ms(options.timeout_s));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, to_ms(std::min(options.timeout_s, kConnectTimeoutS)));
  // Content-Length over the cap stops the transfer before the body (CURLE_FILESIZE_EXCEEDED);
  // on_data enforces it on bodies without one.
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options.max_bytes));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &t);
  // A proxy would make the connection to the private address itself, out of
  // the check's sight: with private addresses refused, no proxy is used.
  if (!options.allow_private) curl_easy_setopt(c, CURLOPT_PROXY, "");
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  const CURLcode rc = curl_easy_perform(c);
  const std::string cap = std::to_string(options.max_bytes) + " bytes";
  check(!t.too_large, ErrorCode::kInvalidInput, url + ": image is larger than " + cap + " (max_image_bytes)");
  check(rc != CURLE_FILESIZE_EXCEEDED, ErrorCode::kInvalidInput,
        url + ": image is larger than " + cap + " (max_image_bytes; its Content-Length says so)");
  check(t.refused.empty() || rc == CURLE_OK, ErrorCode::kInvalidInput, url + ": " + t.refused);
  check(rc == CURLE_OK, ErrorCode::kInvalidInput,
        url + ": fetch failed (" + (error[0] ? std::string(error) : std::string(curl_easy_strerror(rc))) + ")");
  return std::move(t.body);
}

}  // namespace mpool::imageio
