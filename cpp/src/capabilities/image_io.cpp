#include "mpool/capabilities/image_io.h"

#include <ATen/ATen.h>
#include <curl/curl.h>
#include <stb/stb_image.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>

#include "mpool/core/error.h"

namespace mpool::capabilities {
namespace {

void curl_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Download {
  std::string body;
  size_t max_bytes;
  bool too_large = false;
};

size_t on_data(char* data, size_t size, size_t count, void* user) {
  auto* d = static_cast<Download*>(user);
  size_t n = size * count;
  if (d->body.size() + n > d->max_bytes) {
    d->too_large = true;
    return 0;  // aborts the transfer
  }
  d->body.append(data, n);
  return n;
}

}  // namespace

Image image_from_pixels(const uint8_t* data, int64_t height, int64_t width, int64_t channels) {
  check(height > 0 && width > 0, ErrorCode::kInvalidInput,
        "image must have positive height and width, got " + std::to_string(height) + "x" + std::to_string(width));
  check(channels == 1 || channels == 3 || channels == 4, ErrorCode::kInvalidInput,
        "image must have 1, 3 or 4 channels, got " + std::to_string(channels));
  auto pixels = at::empty({height, width, channels}, at::kByte);
  std::memcpy(pixels.data_ptr<uint8_t>(), data, static_cast<size_t>(height * width * channels));
  if (channels == 3) return pixels;
  if (channels == 1) return pixels.expand({height, width, 3}).contiguous();
  return pixels.slice(2, 0, 3).contiguous();  // RGBA: drop alpha
}

Image decode_image(const std::string& bytes, const std::string& source) {
  check(!bytes.empty(), ErrorCode::kInvalidInput, source + ": image data is empty");
  check(bytes.size() < (1u << 31), ErrorCode::kInvalidInput, source + ": image data is larger than 2 GiB");
  int w = 0, h = 0, n = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &w, &h,
                            &n, 3),
      stbi_image_free);
  if (!pixels) {
    const char* why = stbi_failure_reason();
    throw Error(ErrorCode::kInvalidInput, source + ": cannot decode image (" + (why ? why : "unknown format") +
                                              "); supported: PNG, JPEG, BMP, GIF, TGA, PNM");
  }
  return image_from_pixels(pixels.get(), h, w, 3);
}

Image read_image_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), ErrorCode::kInvalidInput, path + ": cannot open image file (" + std::strerror(errno) + ")");
  std::ostringstream data;
  data << in.rdbuf();
  return decode_image(data.str(), path);
}

Image fetch_image(const std::string& url, double timeout_s, size_t max_bytes) {
  curl_init_once();
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  check(curl != nullptr, ErrorCode::kInternal, "libcurl could not start a transfer");
  Download download{{}, max_bytes};
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl.get(), CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);  // no SIGALRM in a threaded process
  curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_s * 1000));
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &download);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, error);
  CURLcode rc = curl_easy_perform(curl.get());
  check(!download.too_large, ErrorCode::kInvalidInput,
        url + ": image is larger than " + std::to_string(max_bytes) + " bytes");
  check(rc == CURLE_OK, ErrorCode::kInvalidInput,
        url + ": fetch failed (" + (error[0] ? std::string(error) : std::string(curl_easy_strerror(rc))) + ")");
  return decode_image(download.body, url);
}

}  // namespace mpool::capabilities
