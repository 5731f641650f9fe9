// mpool.Tokenizer: the native tokenizer.json pipeline. Arguments are converted
// to C++ before the GIL is released, so encode/decode run without it.
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "module.h"
#include "native_gil.h"
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

// Every argument arrives as a Python object and is checked here, so a value of
// the wrong type is an InvalidInput naming the parameter, never pybind11's
// "incompatible function arguments" TypeError.
std::string shown(const py::handle& x) {
  std::string r = py::repr(x);
  if (r.size() > 60) r = r.substr(0, 57) + "...";
  return r + " (" + std::string(py::str(py::type::of(x).attr("__name__"))) + ")";
}

[[noreturn]] void refuse(const std::string& what, const std::string& want, const py::handle& x) {
  throw Error(ErrorCode::kInvalidInput, what + " must be " + want + ", got " + shown(x));
}

bool bool_arg(const py::handle& x, const std::string& what) {
  if (!PyBool_Check(x.ptr())) refuse(what, "True or False", x);
  return x.ptr() == Py_True;
}

// An int (or an object with __index__, such as numpy's integers; not a bool) in [lo, hi].
int64_t int_arg(const py::handle& x, const std::string& what, int64_t lo, int64_t hi) {
  const std::string want = "an int in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (PyBool_Check(x.ptr()) || !PyIndex_Check(x.ptr())) refuse(what, want, x);
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(x.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0 || v < lo || v > hi) refuse(what, want, x);
  return v;
}

std::optional<int64_t> optional_int_arg(const py::handle& x, const std::string& what, int64_t lo, int64_t hi) {
  if (x.is_none()) return std::nullopt;
  return int_arg(x, what, lo, hi);
}

std::string str_arg(const py::handle& x, const std::string& what) {
  if (!PyUnicode_Check(x.ptr())) refuse(what, "a str", x);
  return text_arg(x, what);
}

constexpr int64_t kMaxId = std::numeric_limits<uint32_t>::max();
constexpr int64_t kMaxThreads = 1024;

// A list (any iterable but a str or bytes) of what each item holds.
py::iterable sequence_arg(const py::handle& x, const std::string& what, const std::string& of) {
  if (PyUnicode_Check(x.ptr()) || PyBytes_Check(x.ptr()) || !py::isinstance<py::iterable>(x))
    refuse(what, "a list of " + of, x);
  return py::reinterpret_borrow<py::iterable>(x);
}

std::vector<std::string> to_strings(const py::handle& items, const char* what) {
  std::vector<std::string> out;
  for (auto item : sequence_arg(items, what, "str or bytes"))
    out.push_back(text_arg(item, std::string(what) + "[" + std::to_string(out.size()) + "]"));
  return out;
}

std::vector<uint32_t> ids_arg(const py::handle& x, const std::string& what) {
  std::vector<uint32_t> out;
  for (auto item : sequence_arg(x, what, "token ids"))
    out.push_back(static_cast<uint32_t>(int_arg(item, what + "[" + std::to_string(out.size()) + "]", 0, kMaxId)));
  return out;
}

std::string path_arg(const py::handle& x, const std::string& what) {
  const py::object p = py::hasattr(x, "__fspath__") ? py::object(x.attr("__fspath__")()) : py::reinterpret_borrow<py::object>(x);
  if (!PyUnicode_Check(p.ptr())) refuse(what, "a str or os.PathLike", x);
  return text_arg(p, what);
}


// The last overload of each method: a call that fits its parameter list in no
// way (an unknown keyword, a missing or an extra argument) is an InvalidInput
// that names the method and its parameters, not pybind11's TypeError.
template <class Class>
void refuse_other_calls(Class& cls, const std::string& type, const char* method, const std::string& params,
                        bool is_static = false) {
  auto fail = [type, method, params, is_static](const py::args& args, const py::kwargs& kwargs) -> py::object {
    const size_t positional = args.size() - (is_static || args.size() == 0 ? 0 : 1);  // not self
    std::string got = std::to_string(positional) + " positional argument" + (positional == 1 ? "" : "s");
    if (kwargs.size() > 0) {
      got += " and the keywords";
      for (auto item : kwargs) got += " '" + std::string(py::str(item.first)) + "'";
    }
    throw Error(ErrorCode::kInvalidInput, type + "." + method + "() takes (" + params + "); got " + got);
  };
  if (is_static)
    cls.def_static(method, fail);
  else
    cls.def(method, fail);
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

  py::class_<tk::DecodeStream> stream_class(m, "DecodeStream", "Incremental detokenizer; step(id) returns new text or None.");
  stream_class.def(
          "step",
          [](tk::DecodeStream& stream, const py::object& id) {
            const auto token = static_cast<uint32_t>(int_arg(id, "id", 0, kMaxId));
            GilRelease release;
            return stream.step(token);
          },
          py::arg("id"));

  py::class_<tk::Tokenizer> tokenizer_class(m, "Tokenizer", "A Hugging Face tokenizer.json pipeline run natively.");
  tokenizer_class.def_static(
          "from_file",
          [](const py::object& path) {
            const std::string file = path_arg(path, "path");
            GilRelease release;
            return tk::Tokenizer::from_file(file);
          },
          py::arg("path"))
      .def_static(
          "from_pretrained",
          [](const py::object& where, const py::object& pattern) {
            // A local directory, or a repo id in the local Hugging Face cache (never downloaded).
            // Without tokenizer.json, a tiktoken rank file or a byte-level BPE tokenizer's
            // vocab.json + merges.txt are converted.
            const std::string dir_or_repo_id = path_arg(where, "dir_or_repo_id");
            std::optional<std::string> tokenizer_pattern;
            if (!pattern.is_none()) tokenizer_pattern = str_arg(pattern, "tokenizer_pattern");
            GilRelease nogil;
            auto layout = loading::describe_layout(loading::resolve_model(dir_or_repo_id).path);
            const loading::TokenizerDocument doc =
                loading::read_tokenizer_document(layout.tokenizer_dir, {std::move(tokenizer_pattern)});
            return tk::Tokenizer::from_json(doc.json, doc.source);
          },
          py::arg("dir_or_repo_id"), py::kw_only(), py::arg("tokenizer_pattern") = py::none())
      .def_static(
          "from_str",
          [](const py::object& json) {
            const std::string text = str_arg(json, "json");
            GilRelease release;
            return tk::Tokenizer::from_json(text, "<string>");
          },
          py::arg("json"))
      .def(
          "encode",
          [](const tk::Tokenizer& t, const py::object& text_obj, const py::object& pair_obj,
             const py::object& add_special_tokens) {
            std::string text = text_arg(text_obj, "text");
            std::optional<std::string> pair;
            if (!pair_obj.is_none()) pair = text_arg(pair_obj, "pair");
            const bool special = bool_arg(add_special_tokens, "add_special_tokens");
            GilRelease release;
            std::optional<std::string_view> p;
            if (pair) p = *pair;
            return t.encode(text, p, special);
          },
          py::arg("text"), py::arg("pair") = py::none(), py::arg("add_special_tokens") = true)
      .def(
          "encode_batch",
          [](const tk::Tokenizer& t, const py::object& texts, const py::object& pairs,
             const py::object& add_special_tokens, const py::object& num_threads) {
            auto a = to_strings(texts, "texts");
            std::optional<std::vector<std::string>> b;
            if (!pairs.is_none()) b = to_strings(pairs, "pairs");
            const bool special = bool_arg(add_special_tokens, "add_special_tokens");
            const auto threads = static_cast<int>(int_arg(num_threads, "num_threads", 0, kMaxThreads));
            GilRelease release;
            return t.encode_batch(a, b ? &*b : nullptr, special, threads);
          },
          py::arg("texts"), py::arg("pairs") = py::none(), py::arg("add_special_tokens") = true,
          py::arg("num_threads") = 0)
      .def(
          "decode",
          [](const tk::Tokenizer& t, const py::object& ids, const py::object& skip_special_tokens) {
            const std::vector<uint32_t> tokens = ids_arg(ids, "ids");
            const bool skip = bool_arg(skip_special_tokens, "skip_special_tokens");
            GilRelease release;
            return t.decode(tokens, skip);
          },
          py::arg("ids"), py::arg("skip_special_tokens") = true)
      .def(
          "decode_bytes",
          [](const tk::Tokenizer& t, const py::object& ids, const py::object& skip_special_tokens) {
            const std::vector<uint32_t> tokens = ids_arg(ids, "ids");
            const bool skip = bool_arg(skip_special_tokens, "skip_special_tokens");
            std::string out;
            {
              GilRelease release;
              out = t.decode_bytes(tokens, skip);
            }
            return py::bytes(out);
          },
          py::arg("ids"), py::arg("skip_special_tokens") = true,
          "The bytes the ids decode to, before invalid UTF-8 becomes U+FFFD (a token that holds part of a "
          "character gives that part).")
      .def(
          "decode_batch",
          [](const tk::Tokenizer& t, const py::object& sequences, const py::object& skip_special_tokens,
             const py::object& num_threads) {
            std::vector<std::vector<uint32_t>> all;
            for (auto ids : sequence_arg(sequences, "sequences", "lists of token ids"))
              all.push_back(ids_arg(ids, "sequences[" + std::to_string(all.size()) + "]"));
            const bool skip = bool_arg(skip_special_tokens, "skip_special_tokens");
            const auto threads = static_cast<int>(int_arg(num_threads, "num_threads", 0, kMaxThreads));
            GilRelease release;
            return t.decode_batch(all, skip, threads);
          },
          py::arg("sequences"), py::arg("skip_special_tokens") = true, py::arg("num_threads") = 0)
      .def(
          "decode_stream",
          // Every parameter a py::object: pybind11 (2.13) runs keep_alive<0, 1> even
          // when an argument fails to convert, on a result that does not exist, and
          // crashed the process. The stream keeps its tokenizer alive by hand.
          [](const py::object& self, const py::object& skip_special_tokens) {
            if (!py::isinstance<tk::Tokenizer>(self)) refuse("self", "a Tokenizer", self);
            const auto* t = self.cast<const tk::Tokenizer*>();
            const bool skip = bool_arg(skip_special_tokens, "skip_special_tokens");
            py::object stream = py::cast(std::make_unique<tk::DecodeStream>(*t, skip));
            py::detail::keep_alive_impl(stream, self);
            return stream;
          },
          py::arg("skip_special_tokens") = true)
      .def(
          "enable_truncation",
          [](tk::Tokenizer& t, const py::object& max_length, const py::object& stride, const py::object& strategy,
             const py::object& direction) {
            tk::TruncationParams p;
            p.max_length = static_cast<size_t>(int_arg(max_length, "max_length", 0, std::numeric_limits<int64_t>::max()));
            p.stride = static_cast<size_t>(int_arg(stride, "stride", 0, std::numeric_limits<int64_t>::max()));
            const std::string name = str_arg(strategy, "strategy");
            if (name == "longest_first")
              p.strategy = tk::TruncationStrategy::kLongestFirst;
            else if (name == "only_first")
              p.strategy = tk::TruncationStrategy::kOnlyFirst;
            else if (name == "only_second")
              p.strategy = tk::TruncationStrategy::kOnlySecond;
            else
              throw Error(ErrorCode::kInvalidInput, "unknown truncation strategy '" + name + "'");
            p.direction = parse_direction(str_arg(direction, "direction"));
            t.set_truncation(p);
          },
          py::arg("max_length"), py::arg("stride") = 0, py::arg("strategy") = "longest_first",
          py::arg("direction") = "right")
      .def("no_truncation", [](tk::Tokenizer& t) { t.set_truncation(std::nullopt); })
      .def(
          "enable_padding",
          [](tk::Tokenizer& t, const py::object& direction, const py::object& pad_id, const py::object& pad_type_id,
             const py::object& pad_token, const py::object& length, const py::object& pad_to_multiple_of) {
            tk::PaddingParams p;
            p.direction = parse_direction(str_arg(direction, "direction"));
            p.pad_id = static_cast<uint32_t>(int_arg(pad_id, "pad_id", 0, kMaxId));
            p.pad_type_id = static_cast<uint32_t>(int_arg(pad_type_id, "pad_type_id", 0, kMaxId));
            p.pad_token = str_arg(pad_token, "pad_token");
            constexpr int64_t kMaxSize = std::numeric_limits<int64_t>::max();
            if (auto n = optional_int_arg(length, "length", 0, kMaxSize)) p.fixed_length = static_cast<size_t>(*n);
            if (auto n = optional_int_arg(pad_to_multiple_of, "pad_to_multiple_of", 0, kMaxSize))
              p.pad_to_multiple_of = static_cast<size_t>(*n);
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
      .def(
          "token_to_id", [](const tk::Tokenizer& t, const py::object& token) { return t.token_to_id(str_arg(token, "token")); },
          py::arg("token"))
      .def(
          "id_to_token",
          [](const tk::Tokenizer& t, const py::object& id) {
            return t.id_to_token(static_cast<uint32_t>(int_arg(id, "id", 0, kMaxId)));
          },
          py::arg("id"))
      .def(
          "get_vocab_size",
          [](const tk::Tokenizer& t, const py::object& with_added_tokens) {
            return t.vocab_size(bool_arg(with_added_tokens, "with_added_tokens"));
          },
          py::arg("with_added_tokens") = true);
  refuse_other_calls(stream_class, "DecodeStream", "step", "id");
  const std::string T = "Tokenizer";
  refuse_other_calls(tokenizer_class, T, "from_file", "path", true);
  refuse_other_calls(tokenizer_class, T, "from_pretrained", "dir_or_repo_id, *, tokenizer_pattern=None", true);
  refuse_other_calls(tokenizer_class, T, "from_str", "json", true);
  refuse_other_calls(tokenizer_class, T, "encode", "text, pair=None, add_special_tokens=True");
  refuse_other_calls(tokenizer_class, T, "encode_batch", "texts, pairs=None, add_special_tokens=True, num_threads=0");
  refuse_other_calls(tokenizer_class, T, "decode", "ids, skip_special_tokens=True");
  refuse_other_calls(tokenizer_class, T, "decode_bytes", "ids, skip_special_tokens=True");
  refuse_other_calls(tokenizer_class, T, "decode_batch", "sequences, skip_special_tokens=True, num_threads=0");
  refuse_other_calls(tokenizer_class, T, "decode_stream", "skip_special_tokens=True");
  refuse_other_calls(tokenizer_class, T, "enable_truncation",
                     "max_length, stride=0, strategy='longest_first', direction='right'");
  refuse_other_calls(tokenizer_class, T, "no_truncation", "");
  refuse_other_calls(tokenizer_class, T, "enable_padding",
                     "direction='right', pad_id=0, pad_type_id=0, pad_token='[PAD]', length=None, "
                     "pad_to_multiple_of=None");
  refuse_other_calls(tokenizer_class, T, "no_padding", "");
  refuse_other_calls(tokenizer_class, T, "token_to_id", "token");
  refuse_other_calls(tokenizer_class, T, "id_to_token", "id");
  refuse_other_calls(tokenizer_class, T, "get_vocab_size", "with_added_tokens=True");
}

}  // namespace mpool::bindings
