#include "mpool/imageio/source.h"

#include <array>
#include <cstdint>
#include <cstdio>

#include "mpool/base/error.h"

namespace mpool::imageio {
namespace {

constexpr std::int8_t kWhitespace = -2, kPad = -3, kBad = -1;

constexpr std::array<std::int8_t, 256> make_table() {
  std::array<std::int8_t, 256> t{};
  for (auto& v : t) v = kBad;
  for (int i = 0; i < 26; ++i) {
    t['A' + i] = static_cast<std::int8_t>(i);
    t['a' + i] = static_cast<std::int8_t>(26 + i);
  }
  for (int i = 0; i < 10; ++i) t['0' + i] = static_cast<std::int8_t>(52 + i);
  t['+'] = 62;
  t['/'] = 63;
  t['='] = kPad;
  for (char c : {' ', '\t', '\n', '\r', '\f', '\v'}) t[static_cast<unsigned char>(c)] = kWhitespace;
  return t;
}
constexpr auto kTable = make_table();

// "'#' (0x23)", or just "0xff" for what is not printable ASCII.
std::string show(unsigned char c) {
  char buf[16];
  if (c >= 0x20 && c < 0x7f)
    std::snprintf(buf, sizeof buf, "'%c' (0x%02x)", c, c);
  else
    std::snprintf(buf, sizeof buf, "0x%02x", c);
  return buf;
}

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kInvalidInput, source + ": " + what);
}

int hex(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char a = s[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
    if (a != prefix[i]) return false;
  }
  return true;
}

}  // namespace

std::string decode_base64(std::string_view text, const std::string& source, std::size_t offset) {
  std::string out;
  out.reserve(text.size() / 4 * 3 + 3);
  std::uint32_t acc = 0;
  int have = 0;          // data characters in the current quantum
  std::size_t data = 0;  // data characters seen
  std::size_t pads = 0;
  std::size_t first_pad = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const std::int8_t v = kTable[c];
    if (v == kWhitespace) continue;
    if (v == kBad)
      bad(source, "not valid base64: byte " + std::to_string(offset + i) + " is " + show(c) +
                      ", not a base64 character (A-Z a-z 0-9 + / =)");
    if (v == kPad) {
      if (pads == 0) first_pad = i;
      ++pads;
      continue;
    }
    if (pads > 0)
      bad(source, "not valid base64: byte " + std::to_string(offset + i) + " is " + show(c) +
                      " after the '=' padding at byte " + std::to_string(offset + first_pad));
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    ++data;
    if (++have == 4) {
      out.push_back(static_cast<char>((acc >> 16) & 0xff));
      out.push_back(static_cast<char>((acc >> 8) & 0xff));
      out.push_back(static_cast<char>(acc & 0xff));
      acc = 0;
      have = 0;
    }
  }
  if (data == 0) bad(source, "not valid base64: no data");
  if (have == 1)
    bad(source, "not valid base64: " + std::to_string(data) +
                    " characters, one too many for whole bytes (the last quantum has a single character)");
  if (pads > 0 && (have == 0 || static_cast<std::size_t>(have) + pads != 4))
    bad(source, "not valid base64: " + std::to_string(pads) + " '=' at byte " + std::to_string(offset + first_pad) +
                    " where " + (have == 0 ? std::string("none") : std::to_string(4 - have)) + " belong");
  if (have == 2) {
    out.push_back(static_cast<char>((acc >> 4) & 0xff));
  } else if (have == 3) {
    out.push_back(static_cast<char>((acc >> 10) & 0xff));
    out.push_back(static_cast<char>((acc >> 2) & 0xff));
  }
  return out;
}

DataUri parse_data_uri(std::string_view uri, const std::string& source) {
  if (!iequals_prefix(uri, "data:")) bad(source, "not a data URI (it must start with \"data:\")");
  const std::size_t comma = uri.find(',');
  if (comma == std::string_view::npos)
    bad(source, "data URI has no ',' between its header and its data (RFC 2397: data:[<media type>][;base64],<data>)");
  const std::string_view header = uri.substr(5, comma - 5);
  DataUri out;
  bool base64 = false;
  std::size_t start = 0;
  for (std::size_t part = 0; start <= header.size(); ++part) {
    std::size_t end = header.find(';', start);
    if (end == std::string_view::npos) end = header.size();
    std::string_view item = header.substr(start, end - start);
    if (part == 0)
      out.media_type = std::string(item);
    else if (end == header.size() && item.size() == 6 && iequals_prefix(item, "base64"))
      base64 = true;  // only the last parameter may say base64
    start = end + 1;
  }
  const std::string_view payload = uri.substr(comma + 1);
  if (base64) {
    out.data = decode_base64(payload, source, comma + 1);
    return out;
  }
  out.data.reserve(payload.size());
  for (std::size_t i = 0; i < payload.size(); ++i) {
    const auto c = static_cast<unsigned char>(payload[i]);
    if (c != '%') {
      out.data.push_back(static_cast<char>(c));
      continue;
    }
    const int hi = i + 1 < payload.size() ? hex(static_cast<unsigned char>(payload[i + 1])) : -1;
    const int lo = i + 2 < payload.size() ? hex(static_cast<unsigned char>(payload[i + 2])) : -1;
    if (hi < 0 || lo < 0)
      bad(source, "the '%' at byte " + std::to_string(comma + 1 + i) +
                      " is not followed by two hexadecimal digits");
    out.data.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  if (out.data.empty()) bad(source, "data URI has no data after its ','");
  return out;
}

}  // namespace mpool::imageio
