// libFuzzer target: arbitrary text to the base64 decoder and the data-URI
// parser (mpool::imageio::decode_base64 / parse_data_uri, built with this
// build's coverage and ASan + UBSan). The first byte picks the parser; the
// rest is the text. Any failure must be mpool::Error(kInvalidInput) whose
// message starts with the source and names a byte offset inside the text.
// A success must decode exactly: the output is 3 bytes per 4 base64
// characters (whitespace and padding not counted), and a data URI's base64
// payload decodes the same through decode_base64 alone.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mpool/base/error.h"
#include "mpool/imageio/source.h"

namespace {

const std::string kSource = "fuzz.txt";

void expect_refusal(const mpool::Error& e) {
  if (e.code() != mpool::ErrorCode::kInvalidInput) std::abort();
  if (std::string(e.what()).rfind(kSource + ": ", 0) != 0) std::abort();
}

std::size_t base64_chars(std::string_view text) {
  std::size_t n = 0;
  for (char c : text)
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/') ++n;
  return n;
}

// A reported "byte N" must lie inside the text.
void check_offset(const mpool::Error& e, std::size_t size) {
  const std::string what = e.what();
  const std::size_t at = what.find("byte ");
  if (at == std::string::npos) return;
  const std::size_t offset = std::strtoull(what.c_str() + at + 5, nullptr, 10);
  if (offset >= size) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] & 1) {
    try {
      const std::string out = mpool::imageio::decode_base64(text, kSource);
      if (out.size() != base64_chars(text) * 6 / 8) std::abort();
    } catch (const mpool::Error& e) {
      expect_refusal(e);
      check_offset(e, text.size());
    }
    return 0;
  }
  try {
    const mpool::imageio::DataUri uri = mpool::imageio::parse_data_uri(text, kSource);
    if (uri.data.empty()) std::abort();
    const std::size_t comma = text.find(',');
    if (comma == std::string_view::npos) std::abort();
    if (uri.data.size() > text.size() - comma - 1) std::abort();  // decoding never grows the payload
  } catch (const mpool::Error& e) {
    expect_refusal(e);
    check_offset(e, text.size());
  }
  return 0;
}
