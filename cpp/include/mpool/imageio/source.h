#pragma once
// Encoded image sources given as text: base64 strings and data URIs, decoded
// here (torch-free, without the GIL, fuzzed by fuzz/base64_data_uri_fuzz.cpp)
// rather than in Python. Every refusal is Error(kInvalidInput) whose message
// starts with `source` and names the byte offset of the first bad character.
#include <cstddef>
#include <string>
#include <string_view>

namespace mpool::imageio {

/// Standard base64 (RFC 4648 section 4: A-Z a-z 0-9 + /) to bytes. ASCII
/// whitespace anywhere is skipped (line-wrapped MIME base64 decodes); the
/// '=' padding is optional, but when present it must be what the length needs
/// and only whitespace may follow it. `offset` is added to every byte offset
/// reported (the position of `text` inside what the user passed).
std::string decode_base64(std::string_view text, const std::string& source, std::size_t offset = 0);

/// A parsed RFC 2397 data URI: "data:[<media type>][;<param>...][;base64],<data>".
struct DataUri {
  std::string media_type;  ///< as written ("image/png"), possibly empty
  std::string data;        ///< the decoded payload
};

/// Parses a data URI (the "data:" scheme is case-insensitive). Base64 payloads
/// are decoded with decode_base64; others are percent-decoded ("%41" -> 'A').
/// Refuses a missing "data:" prefix, a missing ',', a malformed '%' escape and
/// bad base64, with the byte offset in `uri`.
DataUri parse_data_uri(std::string_view uri, const std::string& source);

}  // namespace mpool::imageio
