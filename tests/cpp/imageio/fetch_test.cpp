// The private-address check of image URLs: which addresses are refused, the
// IPv4-mapped and IPv4-compatible forms included, and the URL schemes fetched.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>
#include <string>

#include "mpool/base/error.h"
#include "mpool/imageio/fetch.h"

namespace mpool::imageio {
namespace {

AddressKind kind_of(const std::string& ip) {
  if (ip.find(':') == std::string::npos) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, ip.c_str(), &a.sin_addr), 1) << ip;
    return classify_address(reinterpret_cast<const sockaddr*>(&a), sizeof a);
  }
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  EXPECT_EQ(inet_pton(AF_INET6, ip.c_str(), &a.sin6_addr), 1) << ip;
  return classify_address(reinterpret_cast<const sockaddr*>(&a), sizeof a);
}

TEST(AddressCheck, LoopbackPrivateLinkLocalUniqueLocalAndUnspecifiedAreNotPublic) {
  for (const char* ip : {"127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "::127.0.0.1"})
    EXPECT_EQ(kind_of(ip), AddressKind::kLoopback) << ip;
  for (const char* ip : {"10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1",
                         "100.127.255.255", "::ffff:10.1.2.3", "::ffff:192.168.0.1"})
    EXPECT_EQ(kind_of(ip), AddressKind::kPrivate) << ip;
  for (const char* ip : {"169.254.169.254", "fe80::1", "febf::1", "::ffff:169.254.0.1"})
    EXPECT_EQ(kind_of(ip), AddressKind::kLinkLocal) << ip;
  for (const char* ip : {"fc00::1", "fd12:3456::1"}) EXPECT_EQ(kind_of(ip), AddressKind::kUniqueLocal) << ip;
  for (const char* ip : {"0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"})
    EXPECT_EQ(kind_of(ip), AddressKind::kUnspecified) << ip;
  for (const char* ip : {"224.0.0.1", "239.1.1.1", "255.255.255.255", "ff02::1"})
    EXPECT_EQ(kind_of(ip), AddressKind::kMulticast) << ip;
}

TEST(AddressCheck, PublicAddressesNearThePrivateRangesArePublic) {
  for (const char* ip : {"8.8.8.8", "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "192.167.1.1",
                         "192.169.0.0", "100.63.255.255", "100.128.0.0", "169.253.0.1", "126.255.255.255",
                         "128.0.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "fec0::1", "2001:db8::1"})
    EXPECT_EQ(kind_of(ip), AddressKind::kPublic) << ip;
}

TEST(AddressCheck, TextNamesAddressAndPort) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(8080);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  EXPECT_EQ(address_text(reinterpret_cast<const sockaddr*>(&a), sizeof a), "127.0.0.1:8080");
  sockaddr_in6 b{};
  b.sin6_family = AF_INET6;
  b.sin6_port = htons(443);
  inet_pton(AF_INET6, "::1", &b.sin6_addr);
  EXPECT_EQ(address_text(reinterpret_cast<const sockaddr*>(&b), sizeof b), "[::1]:443");
  EXPECT_EQ(classify_address(nullptr, 0), AddressKind::kUnsupported);
  EXPECT_STREQ(address_kind_text(AddressKind::kLoopback), "a loopback address");
}

TEST(Fetch, OnlyHttpAndHttpsUrlsAreFetched) {
  for (const char* url : {"file:///etc/passwd", "ftp://example.com/x.png", "gopher://x", "/etc/passwd"}) {
    try {
      fetch_url(url, FetchOptions{});
      ADD_FAILURE() << url;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
      EXPECT_EQ(std::string(e.what()), std::string(url) + ": only http and https URLs are fetched");
    }
  }
}

TEST(Fetch, ALoopbackUrlIsRefusedBeforeAnyByteIsSent) {
  // Port 9 (discard) on loopback: whether or not anything listens, the socket is never opened.
  try {
    fetch_url("http://127.0.0.1:9/x.png", FetchOptions{});
    ADD_FAILURE() << "fetched";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "http://127.0.0.1:9/x.png: refused to connect to 127.0.0.1:9, a loopback address (the pool was made "
              "with allow_private_urls=False)");
  }
}

}  // namespace
}  // namespace mpool::imageio
