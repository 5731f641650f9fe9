// mpool.Tokenizer: the native tokenizer.json pipeline. Arguments are converted
// to C++ before the GIL is released, so encode/decode run without it.
#include <pybind11/stl.h>

#include "module.h"
#include "mpool/loading/layout.h"
#include "mpool/loading/slow_tokenizer.h"
#include "mpool/base/error.h"
#include "mpool/tokenizer/tokenizer.h"

namespace py = pybind11;
namespace tk = mpool::tokenizer;

namespace mpool::bindings {
namespace {

tk::Direction parse_direction(const std::string& d) {
  if (d == "right") return tk::Direction::kRight;
  if (d == "left") return tk::Direction::kLeft;
  throw Error(ErrorCode::kInvalidInput, "direction must be 'left' or 'right', got '" + d + "'");
}

// str becomes UTF-8; bytes pass through (the tokenizer validates them and names
// the bad byte offset). A str with lone surrogates has no UTF-8 form at all.
std::string text_arg(const py::handle& obj, const std::string& what) {
  if (PyBytes_Check(obj.ptr())) return obj.cast<std::string>();
  if (!PyUnicode_Check(obj.ptr())) throw Error(ErrorCode::kInvalidInput, what + " must be str or bytes");
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
  if (data == nullptr) {
    py::error_already_set err;  // the UnicodeEncodeError, consumed here
    throw Error(ErrorCode::kInvalidInput, what + " is not valid UTF-8: " + std::string(py::str(err.value())));
  }
  return std::string(data, static_cast<size_t>(size));
}

std::vector<std::string> to_strings(const py::iterable& items, const char* what) {
  std::vector<std::string> out;
  for (auto item : items) out.push_back(text_arg(item, std::string(what) + "[" + std::to_string(out.size()) + "]"));
  return out;
}

}  // namespace

void register_tokenizer(py::module_& m) {
  py::class_<tk::Encoding>(m, "Encoding", "Token ids and their alignments for one input.")
      .def_readonly("ids", &tk::Encoding::ids)
      .def_readonly("type_ids", &tk::Encoding::type_ids)
      .def_readonly("tokens", &tk::Encoding::tokens)
      .def_readonly("offsets", &tk::Encoding::char_offsets, "Character offsets into the input.")
      .def_readonly("byte_offsets", &tk::Encoding::offsets, "UTF-8 byte offsets into the input.")
      .def_readonly("special_tokens_mask", &tk::Encoding::special_tokens_mask)
      .def_readonly("attention_mask", &tk::Encoding::attention_mask)
      .def_property_readonly("word_ids",
                             [](const tk::Encoding& e) {
                               py::list out;
                               for (auto w : e.word_ids) out.append(w < 0 ? py::object(py::none()) : py::int_(w));
                               return out;
                             })
      .def("__len__", &tk::Encoding::size)
      .def("__repr__", [](const tk::Encoding& e) { return "Encoding(num_tokens=" + std::to_string(e.size()) + ")"; });

  py::class_<tk::DecodeStream>(m, "DecodeStream", "Incremental detokenizer; step(id) returns new text or None.")
      .def("step", &tk::DecodeStream::step, py::arg("id"), py::call_guard<py::gil_scoped_release>());

  py::class_<tk::Tokenizer>(m, "Tokenizer", "A Hugging Face tokenizer.json pipeline run natively.")
      .def_static(
          "from_file", [](const std::string& path) { return tk::Tokenizer::from_file(path); }, py::arg("path"),
          py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_pretrained",
          [](const py::object& where, const py::object& pattern) {
            // A local directory, or a repo id in the local Hugging Face cache (never downloaded).
            // Without tokenizer.json, a tiktoken rank file or a byte-level BPE tokenizer's
            // vocab.json + merges.txt are converted.
            auto text = [](const py::object& x, const char* name) {
              if (!py::isinstance<py::str>(x))
                throw Error(ErrorCode::kInvalidInput, std::string(name) + " must be a str, got " +
                                                          std::string(py::str(py::type::of(x).attr("__name__"))));
              return x.cast<std::string>();
            };
            const std::string dir_or_repo_id =
                text(py::hasattr(where, "__fspath__") ? py::object(where.attr("__fspath__")()) : where, "dir_or_repo_id");
            std::optional<std::string> tokenizer_pattern;
            if (!pattern.is_none()) tokenizer_pattern = text(pattern, "tokenizer_pattern");
            py::gil_scoped_release nogil;
            auto layout = loading::describe_layout(loading::resolve_model(dir_or_repo_id).path);
            const loading::TokenizerDocument doc =
                loading::read_tokenizer_document(layout.tokenizer_dir, {std::move(tokenizer_pattern)});
            return tk::Tokenizer::from_json(doc.json, doc.source);
          },
          py::arg("dir_or_repo_id"), py::kw_only(), py::arg("tokenizer_pattern") = py::none())
      .def_static(
          "from_str", [](const std::string& json) { return tk::Tokenizer::from_json(json, "<string>"); },
          py::arg("json"), py::call_guard<py::gil_scoped_release>())
      .def(
          "encode",
          [](const tk::Tokenizer& t, const py::object& text_obj, const py::object& pair_obj,
             bool add_special_tokens) {
            std::string text = text_arg(text_obj, "text");
            std::optional<std::string> pair;
            if (!pair_obj.is_none()) pair = text_arg(pair_obj, "pair");
            py::gil_scoped_release release;
            std::optional<std::string_view> p;
            if (pair) p = *pair;
            return t.encode(text, p, add_special_tokens);
          },
          py::arg("text"), py::arg("pair") = py::none(), py::arg("add_special_tokens") = true)
      .def(
          "encode_batch",
          [](const tk::Tokenizer& t, const py::iterable& texts, std::optional<py::iterable> pairs,
             bool add_special_tokens, int num_threads) {
            auto a = to_strings(texts, "texts");
            std::optional<std::vector<std::string>> b;
            if (pairs) b = to_strings(*pairs, "pairs");
            py::gil_scoped_release release;
            return t.encode_batch(a, b ? &*b : nullptr, add_special_tokens, num_threads);
          },
          py::arg("texts"), py::arg("pairs") = py::none(), py::arg("add_special_tokens") = true,
          py::arg("num_threads") = 0)
      .def("decode", &tk::Tokenizer::decode, py::arg("ids"), py::arg("skip_special_tokens") = true,
           py::call_guard<py::gil_scoped_release>())
      .def("decode_batch", &tk::Tokenizer::decode_batch, py::arg("sequences"), py::arg("skip_special_tokens") = true,
           py::arg("num_threads") = 0, py::call_guard<py::gil_scoped_release>())
      .def(
          "decode_stream",
          [](const tk::Tokenizer& t, bool skip_special_tokens) {
            return std::make_unique<tk::DecodeStream>(t, skip_special_tokens);
          },
          py::arg("skip_special_tokens") = true, py::keep_alive<0, 1>())
      .def(
          "enable_truncation",
          [](tk::Tokenizer& t, size_t max_length, size_t stride, const std::string& strategy,
             const std::string& direction) {
            tk::TruncationParams p;
            p.max_length = max_length;
            p.stride = stride;
            if (strategy == "longest_first")
              p.strategy = tk::TruncationStrategy::kLongestFirst;
            else if (strategy == "only_first")
              p.strategy = tk::TruncationStrategy::kOnlyFirst;
            else if (strategy == "only_second")
              p.strategy = tk::TruncationStrategy::kOnlySecond;
            else
              throw Error(ErrorCode::kInvalidInput, "unknown truncation strategy '" + strategy + "'");
            p.direction = parse_direction(direction);
            t.set_truncation(p);
          },
          py::arg("max_length"), py::arg("stride") = 0, py::arg("strategy") = "longest_first",
          py::arg("direction") = "right")
      .def("no_truncation", [](tk::Tokenizer& t) { t.set_truncation(std::nullopt); })
      .def(
          "enable_padding",
          [](tk::Tokenizer& t, const std::string& direction, uint32_t pad_id, uint32_t pad_type_id,
             const std::string& pad_token, std::optional<size_t> length, std::optional<size_t> pad_to_multiple_of) {
            tk::PaddingParams p;
            p.direction = parse_direction(direction);
            p.pad_id = pad_id;
            p.pad_type_id = pad_type_id;
            p.pad_token = pad_token;
            p.fixed_length = length;
            p.pad_to_multiple_of = pad_to_multiple_of;
            t.set_padding(p);
          },
          py::arg("direction") = "right", py::arg("pad_id") = 0, py::arg("pad_type_id") = 0,
          py::arg("pad_token") = "[PAD]", py::arg("length") = py::none(), py::arg("pad_to_multiple_of") = py::none())
      .def("no_padding", [](tk::Tokenizer& t) { t.set_padding(std::nullopt); })
      .def_property_readonly("truncation",
                             [](const tk::Tokenizer& t) -> py::object {
                               if (!t.truncation()) return py::none();
                               py::dict d;
                               d["max_length"] = t.truncation()->max_length;
                               d["stride"] = t.truncation()->stride;
                               return d;
                             })
      .def_property_readonly("padding",
                             [](const tk::Tokenizer& t) -> py::object {
                               if (!t.padding()) return py::none();
                               py::dict d;
                               d["length"] = t.padding()->fixed_length ? py::object(py::int_(*t.padding()->fixed_length))
                                                                       : py::object(py::none());
                               d["pad_id"] = t.padding()->pad_id;
                               d["pad_token"] = t.padding()->pad_token;
                               return d;
                             })
      .def("token_to_id", &tk::Tokenizer::token_to_id, py::arg("token"))
      .def("id_to_token", &tk::Tokenizer::id_to_token, py::arg("id"))
      .def("get_vocab_size", &tk::Tokenizer::vocab_size, py::arg("with_added_tokens") = true);
}

}  // namespace mpool::bindings
