// libFuzzer target: the tokenizer.json loader, then encode and decode.
// Input: tokenizer.json bytes, a NUL byte, then the text to encode. Every
// failure must surface as mpool::Error; anything else (a crash, a sanitizer
// report, another exception type) is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mpool/base/error.h"
#include "mpool/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nul = in.find('\0');
  std::string_view json = in.substr(0, nul);
  std::string_view text = nul == std::string_view::npos ? std::string_view("Hello world") : in.substr(nul + 1);
  std::unique_ptr<mpool::tokenizer::Tokenizer> tok;
  try {
    tok = mpool::tokenizer::Tokenizer::from_json(json, "fuzz.json");
  } catch (const mpool::Error&) {
    return 0;
  }
  try {
    auto e = tok->encode(text);
    auto p = tok->encode(text, text.substr(0, text.size() / 2), false);
    std::string decoded = tok->decode(e.ids, false);
    mpool::tokenizer::DecodeStream stream(*tok, true);
    for (uint32_t id : e.ids) stream.step(id);
    (void)stream.flush();
    for (uint32_t id : p.ids) (void)tok->id_to_token(id);
  } catch (const mpool::Error&) {
  }
  return 0;
}
