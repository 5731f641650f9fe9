#include "mpool/loading/safetensors.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"

namespace mpool::loading {
namespace {

using nlohmann::json;

struct DTypeSpec {
  DType dtype;
  const char* name;
  std::size_t size;
};

constexpr std::array<DTypeSpec, 15> kDTypes{{
    {DType::kBool, "BOOL", 1},   {DType::kU8, "U8", 1},         {DType::kI8, "I8", 1},
    {DType::kU16, "U16", 2},     {DType::kI16, "I16", 2},       {DType::kU32, "U32", 4},
    {DType::kI32, "I32", 4},     {DType::kU64, "U64", 8},       {DType::kI64, "I64", 8},
    {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},   {DType::kF32, "F32", 4},       {DType::kF64, "F64", 8},
}};

const DTypeSpec& spec(DType dtype) noexcept { return kDTypes[static_cast<std::size_t>(dtype)]; }

// Error values are echoed in messages; a hostile header must not make them huge
// or make dump() throw on invalid UTF-8.
std::string show(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

[[noreturn]] void invalid(std::string_view label, const std::string& message) {
  throw Error(ErrorCode::kInvalidInput, std::string(label) + ": " + message);
}

[[noreturn]] void invalid_tensor(std::string_view label, std::string_view name,
                                 const std::string& message) {
  invalid(label, "tensor \"" + std::string(name) + "\": " + message);
}

std::uint64_t read_u64_le(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

TensorInfo parse_entry(std::string_view label, const std::string& name, const json& entry,
                       std::uint64_t data_size) {
  if (!entry.is_object()) invalid_tensor(label, name, "entry must be an object, got " + show(entry));
  TensorInfo info;
  info.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string())
    invalid_tensor(label, name, "\"dtype\" must be a string");
  const auto dtype = parse_dtype(dtype_it->get_ref<const std::string&>());
  if (!dtype) invalid_tensor(label, name, "unknown dtype " + show(*dtype_it));
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array())
    invalid_tensor(label, name, "\"shape\" must be a list of non-negative integers");
  std::uint64_t numel = 1;
  bool overflow = false;
  for (const json& dim : *shape_it) {
    if (!dim.is_number_unsigned() ||
        dim.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      invalid_tensor(label, name, "\"shape\" must be a list of non-negative integers, got " +
                                      show(*shape_it));
    const auto d = dim.get<std::uint64_t>();
    info.shape.push_back(static_cast<std::int64_t>(d));
    overflow = overflow || __builtin_mul_overflow(numel, d, &numel);
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned())
    invalid_tensor(label, name, "\"data_offsets\" must be [begin, end] with non-negative integers");
  info.begin = (*offsets_it)[0].get<std::uint64_t>();
  info.end = (*offsets_it)[1].get<std::uint64_t>();
  if (info.begin > info.end)
    invalid_tensor(label, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                    std::to_string(info.end) + "] end before they begin");
  if (info.end > data_size)
    invalid_tensor(label, name, "data_offsets [" + std::to_string(info.begin) + ", " +
                                    std::to_string(info.end) + "] lie outside the data section (" +
                                    std::to_string(data_size) + " bytes)");
  std::uint64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, dtype_size(info.dtype), &bytes);
  if (overflow || bytes != info.end - info.begin)
    invalid_tensor(label, name,
                   "shape " + show(*shape_it) + " x " + dtype_name(info.dtype) + " needs " +
                       (overflow ? std::string("more than 2^64") : std::to_string(bytes)) +
                       " bytes, but data_offsets span " + std::to_string(info.end - info.begin));
  return info;
}

void check_no_overlap(std::string_view label, const std::vector<TensorInfo>& tensors) {
  std::vector<const TensorInfo*> sorted;
  for (const auto& t : tensors)
    if (t.end > t.begin) sorted.push_back(&t);  // empty tensors occupy no bytes
  std::sort(sorted.begin(), sorted.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo* t : sorted) {
    if (furthest != nullptr && t->begin < furthest->end)
      invalid_tensor(label, t->name,
                     "data_offsets [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
                         "] overlap tensor \"" + furthest->name + "\" [" +
                         std::to_string(furthest->begin) + ", " + std::to_string(furthest->end) +
                         "]");
    if (furthest == nullptr || t->end > furthest->end) furthest = t;
  }
}

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

const char* kPickleAdvice =
    "a PyTorch pickle checkpoint; mpool reads only safetensors (loading pickle can run "
    "arbitrary code). Convert it once in Python: for a transformers model, "
    "`AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`; for a "
    "plain state dict, `safetensors.torch.save_file(torch.load(path, weights_only=True), "
    "\"model.safetensors\")`";
const char* kGgufAdvice =
    "a GGUF file; mpool reads only safetensors. Convert it in Python with transformers: "
    "`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name).save_pretrained(out, "
    "safe_serialization=True)` (this dequantizes the weights)";

std::optional<std::string> advice_by_name(const std::string& name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".ckpt", ".pkl"})
    if (has_suffix(name, ext)) return std::string(kPickleAdvice);
  if (has_suffix(name, ".gguf")) return std::string(kGgufAdvice);
  return std::nullopt;
}

// Only consulted once a file failed to parse as safetensors: a valid header
// length can start with the same bytes (640 = 0x280 reads as pickle's "\x80\x02").
std::optional<std::string> advice_by_magic(const std::byte* data, std::size_t size) {
  if (size < 4) return std::nullopt;
  const auto* m = reinterpret_cast<const unsigned char*>(data);
  if (std::memcmp(m, "GGUF", 4) == 0) return std::string(kGgufAdvice);
  if (std::memcmp(m, "PK\x03\x04", 4) == 0) return std::string(kPickleAdvice);
  // Pickle protocol 2+ starts with PROTO (0x80) and the protocol number.
  if (m[0] == 0x80 && m[1] >= 2 && m[1] <= 5) return std::string(kPickleAdvice);
  return std::nullopt;
}

}  // namespace

std::size_t dtype_size(DType dtype) noexcept { return spec(dtype).size; }
const char* dtype_name(DType dtype) noexcept { return spec(dtype).name; }

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& s : kDTypes)
    if (name == s.name) return s.dtype;
  return std::nullopt;
}

std::uint64_t TensorInfo::numel() const noexcept {
  std::uint64_t n = 1;
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

SafetensorsHeader parse_safetensors_header(const std::byte* file, std::size_t size,
                                           std::string_view label) {
  if (size < 8)
    invalid(label, "file is " + std::to_string(size) +
                       " bytes, too small for the 8-byte header length of a safetensors file");
  const std::uint64_t header_len = read_u64_le(file);
  if (header_len > size - 8)
    invalid(label, "header length " + std::to_string(header_len) +
                       " goes beyond the end of the file (" + std::to_string(size) + " bytes)");
  if (header_len > kMaxHeaderBytes)
    invalid(label, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                       std::to_string(kMaxHeaderBytes) + " bytes");

  const char* text = reinterpret_cast<const char*>(file + 8);
  json root;
  try {
    root = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    invalid(label, std::string("malformed JSON header: ") + e.what());
  }
  if (!root.is_object()) invalid(label, "header must be a JSON object, got " + show(root));

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  header.data_size = size - header.data_offset;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) invalid(label, "\"__metadata__\" must be an object of strings");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string())
          invalid(label, "\"__metadata__\" value \"" + mkey + "\" must be a string, got " +
                             show(mvalue));
        header.metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(parse_entry(label, key, value, header.data_size));
  }
  check_no_overlap(label, header.tensors);
  return header;
}

SafetensorsFile::SafetensorsFile(std::shared_ptr<MappedFile> mapping, SafetensorsHeader header)
    : mapping_(std::move(mapping)), header_(std::move(header)) {
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  if (auto advice = advice_by_name(path.filename().string())) invalid(path.string(), "is " + *advice);
  auto mapping = MappedFile::open(path);
  SafetensorsHeader header;
  try {
    header = parse_safetensors_header(mapping->data(), mapping->size(), path.string());
  } catch (const Error&) {
    // A misnamed pickle or GGUF file: say what it is rather than why it is not safetensors.
    if (auto advice = advice_by_magic(mapping->data(), mapping->size())) invalid(path.string(), "is " + *advice);
    throw;
  }
  return std::shared_ptr<const SafetensorsFile>(new SafetensorsFile(std::move(mapping), std::move(header)));
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const noexcept {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

bool is_training_artifact(std::string_view filename) noexcept {
  for (std::string_view prefix : {"training_args.", "optimizer.", "scheduler.", "scaler.", "rng_state"})
    if (filename.substr(0, prefix.size()) == prefix) return true;
  return false;
}

std::optional<std::string> unsupported_format_advice(const std::filesystem::path& path) {
  if (auto advice = advice_by_name(path.filename().string())) return advice;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  if (!in.read(magic, sizeof magic)) return std::nullopt;
  return advice_by_magic(reinterpret_cast<const std::byte*>(magic), sizeof magic);
}

Checkpoint Checkpoint::open(const std::filesystem::path& file_or_dir) {
  namespace fs = std::filesystem;
  Checkpoint ckpt;
  std::error_code ec;
  fs::path index;
  std::vector<fs::path> files;

  if (fs::is_directory(file_or_dir, ec)) {
    const fs::path dir = file_or_dir;
    // transformers' names, then diffusers' (a pipeline's unet/, vae/, transformer/ folders).
    if (fs::is_regular_file(dir / "model.safetensors.index.json", ec)) {
      index = dir / "model.safetensors.index.json";
    } else if (fs::is_regular_file(dir / "diffusion_pytorch_model.safetensors.index.json", ec)) {
      index = dir / "diffusion_pytorch_model.safetensors.index.json";
    } else if (fs::is_regular_file(dir / "model.safetensors", ec)) {
      files.push_back(dir / "model.safetensors");
    } else if (fs::is_regular_file(dir / "diffusion_pytorch_model.safetensors", ec)) {
      files.push_back(dir / "diffusion_pytorch_model.safetensors");
    } else {
      std::vector<fs::path> found, foreign;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        if (!e.is_regular_file(ec)) continue;
        if (e.path().extension() == ".safetensors") found.push_back(e.path());
        else if (e.path().extension() != ".json" && !is_training_artifact(e.path().filename().string()) &&
                 unsupported_format_advice(e.path()).has_value())
          foreign.push_back(e.path());
      }
      std::sort(found.begin(), found.end());
      if (found.size() == 1) {
        files = found;
      } else if (found.size() > 1) {
        std::string names;
        for (const auto& f : found) names += (names.empty() ? "" : ", ") + f.filename().string();
        invalid(dir.string(), "holds several .safetensors files (" + names +
                                  ") and no model.safetensors.index.json; name the file to load");
      } else if (!foreign.empty()) {
        std::sort(foreign.begin(), foreign.end());
        invalid(dir.string(), "has no safetensors weights; " + foreign.front().filename().string() +
                                  " is " + *unsupported_format_advice(foreign.front()));
      } else {
        invalid(dir.string(),
                "has no weights: looked for model.safetensors.index.json, "
                "diffusion_pytorch_model.safetensors.index.json, model.safetensors, "
                "diffusion_pytorch_model.safetensors and *.safetensors");
      }
    }
  } else if (fs::is_regular_file(file_or_dir, ec)) {
    if (has_suffix(file_or_dir.filename().string(), ".index.json")) index = file_or_dir;
    else files.push_back(file_or_dir);
  } else {
    invalid(file_or_dir.string(), "no such file or directory");
  }

  if (!index.empty()) {
    ckpt.index_path_ = index;
    const json root = load_json(index);
    const auto map_it = root.is_object() ? root.find("weight_map") : root.end();
    if (map_it == root.end() || !map_it->is_object())
      invalid(index.string(), "\"weight_map\" must be an object mapping tensor names to files");
    std::set<std::string> shard_names;
    for (const auto& [tensor, file] : map_it->items()) {
      if (!file.is_string())
        invalid(index.string(), "weight_map entry \"" + tensor + "\" must be a file name, got " + show(file));
      const fs::path rel(file.get<std::string>());
      bool escapes = rel.is_absolute() || rel.empty();
      for (const auto& part : rel) escapes = escapes || part == "..";
      if (escapes)
        invalid(index.string(), "weight_map entry \"" + tensor + "\" names " + show(file) +
                                    ", which is not a file inside the checkpoint directory");
      shard_names.insert(file.get<std::string>());
    }
    if (shard_names.empty()) invalid(index.string(), "\"weight_map\" is empty");
    std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards;
    for (const auto& name : shard_names) {
      const fs::path shard_path = index.parent_path() / name;
      if (!fs::is_regular_file(shard_path, ec))
        invalid(index.string(), "lists shard " + name + ", but " + shard_path.string() + " does not exist");
      auto shard = SafetensorsFile::open(shard_path);
      shards.emplace(name, shard);
      ckpt.files_.push_back(shard);
    }
    for (const auto& [tensor, file] : map_it->items()) {
      const auto& shard = shards.at(file.get<std::string>());
      const TensorInfo* info = shard->find(tensor);
      if (info == nullptr)
        invalid(index.string(), "tensor \"" + tensor + "\": the index places it in " +
                                    shard->path().string() + ", which does not hold it");
      ckpt.tensors_.emplace(tensor, TensorRef{shard, info});
    }
    for (const auto& shard : ckpt.files_)
      for (const auto& info : shard->header().tensors) {
        const auto it = ckpt.tensors_.find(info.name);
        if (it == ckpt.tensors_.end()) {
          ckpt.warnings_.push_back(shard->path().string() + ": tensor \"" + info.name +
                                   "\" is not listed in " + index.filename().string());
          ckpt.tensors_.emplace(info.name, TensorRef{shard, &info});
        } else if (it->second.file != shard) {
          ckpt.warnings_.push_back(shard->path().string() + ": tensor \"" + info.name +
                                   "\" is also stored here; using " +
                                   it->second.file->path().filename().string() + " as the index says");
        }
      }
  } else {
    for (const auto& f : files) {
      auto file = SafetensorsFile::open(f);
      for (const auto& info : file->header().tensors) ckpt.tensors_.emplace(info.name, TensorRef{file, &info});
      ckpt.files_.push_back(std::move(file));
    }
  }
  for (const auto& f : ckpt.files_) ckpt.searched_ += (ckpt.searched_.empty() ? "" : ", ") + f->path().string();
  return ckpt;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, ref] : tensors_) out.push_back(name);
  return out;
}

std::optional<TensorRef> Checkpoint::find(std::string_view name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return std::nullopt;
  return it->second;
}

TensorRef Checkpoint::require(std::string_view name) const {
  if (auto ref = find(name)) return *ref;
  const std::string stored = prefix_.empty() ? "" : " (stored as \"" + prefix_ + std::string(name) + "\")";
  throw Error(ErrorCode::kInvalidInput, "missing tensor \"" + std::string(name) + "\"" + stored +
                                            ": not found in " + searched_);
}

Checkpoint Checkpoint::with_prefix(std::string_view prefix) const {
  Checkpoint view;
  view.prefix_ = prefix_ + std::string(prefix);
  view.index_path_ = index_path_;
  view.warnings_ = warnings_;
  std::set<const SafetensorsFile*> used;
  for (auto it = tensors_.lower_bound(prefix); it != tensors_.end(); ++it) {
    const std::string_view name = it->first;
    if (name.substr(0, prefix.size()) != prefix) break;  // sorted: the prefix's names are contiguous
    if (name.size() == prefix.size()) continue;          // a tensor named exactly the prefix has no name under it
    view.tensors_.emplace(std::string(name.substr(prefix.size())), it->second);
    used.insert(it->second.file.get());
  }
  if (view.tensors_.empty())
    throw Error(ErrorCode::kInvalidInput, searched_ + ": no tensor is stored under the prefix \"" +
                                              view.prefix_ + "\"");
  for (const auto& f : files_)
    if (used.count(f.get())) view.files_.push_back(f);
  for (const auto& f : view.files_) view.searched_ += (view.searched_.empty() ? "" : ", ") + f->path().string();
  view.searched_ += " (tensors under \"" + view.prefix_ + "\")";
  return view;
}

std::vector<std::string> Checkpoint::unexpected(const std::vector<std::string>& expected) const {
  const std::set<std::string_view> wanted(expected.begin(), expected.end());
  std::vector<std::string> out;
  for (const auto& [name, ref] : tensors_)
    if (!wanted.count(name))
      out.push_back(ref.file->path().string() + ": unexpected tensor \"" + prefix_ + name +
                    "\" is not used by the model and was not loaded");
  return out;
}

}  // namespace mpool::loading
