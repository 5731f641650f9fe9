#include "mpool/capabilities/image_io.h"

#include <ATen/ATen.h>
#include <curl/curl.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "mpool/base/error.h"
#include "mpool/imageio/decode.h"

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

namespace {

// The decoder's buffer becomes the tensor's storage, without a copy.
Image to_tensor(imageio::DecodedImage decoded) {
  const int64_t h = decoded.height, w = decoded.width;
  auto deleter = decoded.pixels.get_deleter();
  std::uint8_t* data = decoded.pixels.release();
  return at::from_blob(data, {h, w, 3}, [deleter](void* p) { deleter(p); }, at::TensorOptions().dtype(at::kByte));
}

}  // namespace

Image decode_image(const std::string& bytes, const std::string& source) {
  return to_tensor(imageio::decode(bytes.data(), bytes.size(), source));
}

Image read_image_file(const std::string& path) { return to_tensor(imageio::decode_file(path)); }

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
