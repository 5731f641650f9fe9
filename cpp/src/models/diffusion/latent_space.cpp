#include "models/diffusion/latent_space.h"

#include <ATen/CPUGeneratorImpl.h>

#include "mpool/base/error.h"
#include "mpool/imageio/preprocess.h"
#include "mpool/loading/config.h"
#include "mpool/models/image_text_embedder.h"

namespace mpool::models::diffusion {

namespace fs = std::filesystem;
namespace cap = capabilities;

namespace {

// A (1, 3, H, W) float image in [-1, 1] -> HWC uint8, as diffusers' numpy_to_pil rounds.
at::Tensor to_uint8(const at::Tensor& image) {
  return (image[0].permute({1, 2, 0}).to(at::kFloat).cpu() / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).contiguous();
}

}  // namespace

void LatentSpaceConfig::find_preview(const NativeOptions& options, const fs::path& default_dir) {
  const std::string option = options.options.get_string("preview_vae", "");
  const fs::path dir = option.empty() ? default_dir : fs::path(option);
  if (!dir.empty() && fs::is_regular_file(dir / "config.json")) {
    preview_dir = dir;
    preview = vae::AutoencoderTinyConfig::from(loading::load_model_config(dir));
    check(preview->latent_channels == vae.latent_channels, ErrorCode::kInvalidInput,
          dir.string() + ": the preview autoencoder takes " + std::to_string(preview->latent_channels) +
              " latent channels, the model makes " + std::to_string(vae.latent_channels));
  } else {
    check(option.empty(), ErrorCode::kInvalidInput, "option preview_vae: " + (dir / "config.json").string() + " is missing");
  }
}

void LatentSpaceConfig::measure(WeightMeter& meter) const {
  meter.measure(vae_weights, vae_dtype(), [&](const nn::Weights& w) { vae::AutoencoderKL::load(w, vae); });
  if (preview_dir)
    meter.measure(WeightSource{*preview_dir, ""}, dtype,
                  [&](const nn::Weights& w) { vae::AutoencoderTiny::load(w, *preview); });
}

double LatentSpaceConfig::decode_peak(int64_t side) const {
  return 4.0 * static_cast<double>(vae.block_out_channels.front()) * static_cast<double>(side) *
         static_cast<double>(side) * static_cast<double>(c10::elementSize(vae_dtype()));
}

LatentSpace::LatentSpace(const LatentSpaceConfig& config, at::Device device) : config_(config), device_(device) {
  vae_ = vae::AutoencoderKL::load(open_weights(config.vae_weights, config.vae_dtype(), device), config.vae);
  if (config.preview_dir && config.preview)
    preview_vae_ = vae::AutoencoderTiny::load(open_weights(WeightSource{*config.preview_dir, ""}, config.dtype, device),
                                              *config.preview);
  else
    fit_preview_projection();
}

at::Tensor LatentSpace::encode(const cap::Image& image, int64_t width, int64_t height, at::Generator& gen) const {
  at::Tensor rgb = rgb8(image, "init_image");
  if (rgb.size(0) != height || rgb.size(1) != width) {
    const at::Tensor src = rgb.contiguous();
    imageio::Rgb8 out = imageio::resize(src.data_ptr<uint8_t>(), src.size(0), src.size(1), height, width,
                                        imageio::Resample::kLanczos);
    rgb = at::from_blob(out.pixels.data(), {height, width, 3}, at::kByte).clone();
  }
  const at::Tensor pixels =
      (rgb.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat) / 255.0 * 2.0 - 1.0).to(device_, config_.vae_dtype());
  const vae::AutoencoderKL::Moments m = vae_.encode(pixels);
  // A sample of the latent distribution (diffusers' default), then the scaling.
  const at::Tensor noise = at::randn(m.mean.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor sample = m.mean.to(at::kFloat).cpu() + at::exp(0.5 * m.logvar.to(at::kFloat).cpu()) * noise;
  return (sample - config_.vae.shift()) * config_.vae.scaling_factor;
}

at::Tensor LatentSpace::decode(const at::Tensor& latents) const {
  return vae_.decode((latents / config_.vae.scaling_factor + config_.vae.shift()).to(device_, config_.vae_dtype()));
}

void LatentSpace::fit_preview_projection() {
  // Smooth random colour fields, encoded by the VAE: a least-squares map from
  // each latent pixel (plus a constant) to the mean colour of the pixels it covers.
  const int64_t f = config_.scale(), side = 8 * f, k = 6;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor coarse = at::rand({k, 3, 4, 4}, gen) * 2 - 1;
  const at::Tensor images = at::upsample_bilinear2d(coarse, {side, side}, false);
  const at::Tensor z = (vae_.encode(images.to(device_, config_.vae_dtype())).mean.to(at::kFloat).cpu() -
                        config_.vae.shift()) *
                       config_.vae.scaling_factor;
  const at::Tensor target = at::avg_pool2d(images, {f, f});
  const int64_t c = z.size(1);
  const at::Tensor x = at::cat({z.permute({0, 2, 3, 1}).reshape({-1, c}), at::ones({z.numel() / c, 1})}, 1);
  const at::Tensor y = target.permute({0, 2, 3, 1}).reshape({-1, 3});
  preview_projection_ = std::get<0>(at::linalg_lstsq(x, y, std::nullopt, "gelsd"));
}

cap::Image LatentSpace::preview(const at::Tensor& estimate) const {
  if (preview_vae_) {
    const auto& t = preview_vae_->config();
    return to_uint8(preview_vae_->decode((estimate / t.scaling_factor + t.shift_factor).to(device_, config_.dtype)));
  }
  const at::Tensor z = estimate[0].to(at::kFloat).cpu().permute({1, 2, 0});
  const int64_t c = z.size(2);
  const at::Tensor rgb = at::addmm(preview_projection_[c], z.reshape({-1, c}), preview_projection_.narrow(0, 0, c));
  return (rgb.view({z.size(0), z.size(1), 3}) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).contiguous();
}

cap::Image LatentSpace::output(const at::Tensor& image, bool float_output) {
  if (float_output) return (image[0].permute({1, 2, 0}).to(at::kFloat).cpu() / 2 + 0.5).clamp(0, 1).contiguous();
  return to_uint8(image);
}

}  // namespace mpool::models::diffusion
