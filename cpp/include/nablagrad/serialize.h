// nablagrad/serialize.h - reading and writing tensors in the safetensors format.
//
//     nn::Sequential net(...);
//     auto sd = load_safetensors("model.safetensors");      // std::map<std::string, Tensor>
//     load_state_dict(net, sd);                              // strict: names, shapes checked
//     save_safetensors("out.safetensors", state_dict(net)); // atomic (temp + fsync + rename)
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"k": "v"}} (padded with spaces), then the raw little-endian data. Files
// written by Python's ng.save hold nested checkpoints under dotted names ("model.0.weight");
// `prefix` in load_state_dict selects one ("model.").
//
// The reader is bounded and defensive: the header length is checked against the file size and a
// cap (100 MB), the JSON parser is strict (objects, arrays, strings with escapes, integers,
// true/false/null; nesting depth limited), each entry's dtype, shape and byte count must agree,
// and the offsets must tile the data section exactly (in bounds, no overlap, no gaps), bool bytes
// must be 0 or 1. Any violation throws std::invalid_argument naming the file and the problem;
// I/O failures throw std::runtime_error. Supported dtypes: F32, F64, I64, BOOL.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "autograd.h"
#include "layer.h"
#include "tensor.h"

namespace nablagrad {

/// Largest JSON header the reader accepts (safetensors' own limit is 100 MB).
constexpr uint64_t kSafetensorsMaxHeader = 100u * 1000u * 1000u;

namespace serialize_detail {

inline void check_little_endian() {
  const uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  if (first != 1) throw std::runtime_error("safetensors: only little-endian hosts are supported");
}

// ---- a small strict JSON parser (header only) ------------------------------------------
struct Json {
  enum Kind { Null, Bool, Int, Str, Arr, Obj } kind = Null;
  bool b = false;
  int64_t i = 0;
  bool neg = false;  // integer literal had a minus sign
  std::string s;
  std::vector<Json> arr;
  std::vector<std::pair<std::string, Json>> obj;
};

class JsonParser {
 public:
  JsonParser(const char* p, std::size_t n, const std::string& where) : p_(p), n_(n), where_(where) {}

  Json parse_document() {
    skip_ws();
    Json v = value(0);
    skip_ws();
    if (pos_ != n_) fail("unexpected data after the JSON header");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(where_ + ": invalid safetensors header: " + what + " (at byte " +
                                std::to_string(pos_) + " of the header)");
  }
  void skip_ws() {
    while (pos_ < n_ && (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r')) ++pos_;
  }
  char peek() const { return pos_ < n_ ? p_[pos_] : '\0'; }
  void expect(char c) {
    if (pos_ >= n_ || p_[pos_] != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  void literal(const char* word) {
    const std::size_t len = std::strlen(word);
    if (n_ - pos_ < len || std::memcmp(p_ + pos_, word, len) != 0) fail("invalid literal");
    pos_ += len;
  }

  Json value(int depth) {
    if (depth > 64) fail("nesting too deep");
    Json v;
    const char c = peek();
    if (c == '{') {
      v.kind = Json::Obj;
      ++pos_;
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      std::set<std::string> seen;
      for (;;) {
        skip_ws();
        if (peek() != '"') fail("expected a string key");
        std::string key = string();
        if (!seen.insert(key).second) fail("duplicate key \"" + key + "\"");
        skip_ws();
        expect(':');
        skip_ws();
        v.obj.emplace_back(std::move(key), value(depth + 1));
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Arr;
      ++pos_;
      skip_ws();
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      for (;;) {
        skip_ws();
        v.arr.push_back(value(depth + 1));
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::Str;
      v.s = string();
      return v;
    }
    if (c == 't' || c == 'f') {
      v.kind = Json::Bool;
      v.b = c == 't';
      literal(v.b ? "true" : "false");
      return v;
    }
    if (c == 'n') {
      literal("null");
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return integer();
    fail(pos_ >= n_ ? "unexpected end of the header" : "unexpected character");
  }

  Json integer() {
    Json v;
    v.kind = Json::Int;
    if (peek() == '-') {
      v.neg = true;
      ++pos_;
    }
    if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit");
    if (peek() == '0' && pos_ + 1 < n_ && p_[pos_ + 1] >= '0' && p_[pos_ + 1] <= '9') fail("leading zero");
    uint64_t mag = 0;
    while (peek() >= '0' && peek() <= '9') {
      const uint64_t d = static_cast<uint64_t>(p_[pos_] - '0');
      if (mag > (UINT64_MAX - d) / 10) fail("integer too large");
      mag = mag * 10 + d;
      ++pos_;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') fail("non-integer numbers are not allowed in the header");
    if (mag > static_cast<uint64_t>(INT64_MAX)) fail("integer too large");
    v.i = v.neg ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag);
    return v;
  }

  unsigned hex4() {
    if (n_ - pos_ < 4) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = p_[pos_++];
      u <<= 4;
      if (h >= '0' && h <= '9') u |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f') u |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') u |= static_cast<unsigned>(h - 'A' + 10);
      else fail("bad \\u escape");
    }
    return u;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= n_) fail("unterminated string");
      const char c = p_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= n_) fail("unterminated escape");
      const char e = p_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u') fail("unpaired surrogate");
            pos_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate");
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }

  const char* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
  const std::string& where_;
};

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

inline const char* st_dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int64: return "I64";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

inline bool st_dtype_from_name(const std::string& s, DType& out) {
  if (s == "F32") out = DType::Float32;
  else if (s == "F64") out = DType::Float64;
  else if (s == "I64") out = DType::Int64;
  else if (s == "BOOL") out = DType::Bool;
  else return false;
  return true;
}

/// Source of bytes: read(offset, size, dst) copies [offset, offset+size) (all in bounds).
using ReadFn = std::function<void(uint64_t, std::size_t, void*)>;

struct Parsed {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
};

inline Parsed parse(uint64_t file_size, const ReadFn& read, const std::string& where) {
  check_little_endian();
  auto bad = [&](const std::string& what) -> std::invalid_argument {
    return std::invalid_argument(where + ": invalid safetensors file: " + what);
  };
  if (file_size < 8) throw bad("only " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  unsigned char lenbuf[8];
  read(0, 8, lenbuf);
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | lenbuf[k];
  if (n > kSafetensorsMaxHeader)
    throw bad("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kSafetensorsMaxHeader) +
              " bytes");
  if (n > file_size - 8)
    throw bad("header length " + std::to_string(n) + " but the file has only " + std::to_string(file_size - 8) +
              " bytes after it (truncated?)");
  if (n < 2) throw bad("header length " + std::to_string(n) + " is too short for a JSON object");
  std::string header(static_cast<std::size_t>(n), '\0');
  read(8, static_cast<std::size_t>(n), &header[0]);
  const Json doc = JsonParser(header.data(), header.size(), where).parse_document();
  if (doc.kind != Json::Obj) throw bad("the header is not a JSON object");
  const uint64_t data_size = file_size - 8 - n;
  const uint64_t data_start = 8 + n;

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  Parsed out;
  for (const auto& kv : doc.obj) {
    const std::string& name = kv.first;
    const Json& e = kv.second;
    if (name == "__metadata__") {
      if (e.kind != Json::Obj) throw bad("__metadata__ is not an object");
      for (const auto& m : e.obj) {
        if (m.second.kind != Json::Str) throw bad("__metadata__ value for \"" + m.first + "\" is not a string");
        out.metadata[m.first] = m.second.s;
      }
      continue;
    }
    const std::string what = "tensor \"" + name + "\"";
    if (e.kind != Json::Obj) throw bad(what + " is not described by an object");
    const Json *jd = nullptr, *js = nullptr, *jo = nullptr;
    for (const auto& f : e.obj) {
      if (f.first == "dtype") jd = &f.second;
      else if (f.first == "shape") js = &f.second;
      else if (f.first == "data_offsets") jo = &f.second;
      else throw bad(what + " has an unknown field \"" + f.first + "\"");
    }
    if (!jd || !js || !jo) throw bad(what + " lacks dtype, shape or data_offsets");
    Entry en;
    en.name = name;
    if (jd->kind != Json::Str) throw bad(what + ": dtype is not a string");
    if (!st_dtype_from_name(jd->s, en.dtype))
      throw bad(what + ": unsupported dtype \"" + jd->s + "\" (nablagrad reads F32, F64, I64, BOOL)");
    if (js->kind != Json::Arr) throw bad(what + ": shape is not an array");
    if (js->arr.size() > 64) throw bad(what + ": too many dimensions");
    for (const Json& d : js->arr) {
      if (d.kind != Json::Int || d.neg) throw bad(what + ": shape entries must be non-negative integers");
      en.shape.push_back(d.i);
    }
    int64_t numel = 0;
    try {
      numel = shape_numel(en.shape);
    } catch (const std::invalid_argument&) {
      throw bad(what + ": shape " + shape_str(en.shape) + " has too many elements");
    }
    if (jo->kind != Json::Arr || jo->arr.size() != 2 || jo->arr[0].kind != Json::Int || jo->arr[1].kind != Json::Int ||
        jo->arr[0].neg || jo->arr[1].neg)
      throw bad(what + ": data_offsets must be two non-negative integers");
    en.begin = static_cast<uint64_t>(jo->arr[0].i);
    en.end = static_cast<uint64_t>(jo->arr[1].i);
    if (en.begin > en.end) throw bad(what + ": data_offsets [" + std::to_string(en.begin) + ", " +
                                     std::to_string(en.end) + "] are reversed");
    if (en.end > data_size)
      throw bad(what + ": data_offsets end " + std::to_string(en.end) + " is beyond the data section of " +
                std::to_string(data_size) + " bytes (truncated?)");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), static_cast<uint64_t>(dtype_size(en.dtype)), &nbytes) ||
        nbytes != en.end - en.begin)
      throw bad(what + ": shape " + shape_str(en.shape) + " of " + jd->s + " needs " + std::to_string(nbytes) +
                " bytes but data_offsets span " + std::to_string(en.end - en.begin));
    entries.push_back(std::move(en));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const Entry& en : entries) {
    if (en.begin != pos)
      throw bad("tensor \"" + en.name + "\" starts at byte " + std::to_string(en.begin) + " of the data section, " +
                (en.begin < pos ? "overlapping the previous tensor" : "leaving a gap") + " (expected " +
                std::to_string(pos) + ")");
    pos = en.end;
  }
  if (pos != data_size)
    throw bad("the tensors cover " + std::to_string(pos) + " bytes but the data section has " +
              std::to_string(data_size));
  for (const Entry& en : entries) {
    Tensor t = Tensor::empty(en.shape, en.dtype);
    const std::size_t nbytes = static_cast<std::size_t>(en.end - en.begin);
    if (nbytes) read(data_start + en.begin, nbytes, t.raw_data());
    if (en.dtype == DType::Bool) {
      const unsigned char* b = static_cast<const unsigned char*>(t.raw_data());
      for (std::size_t k = 0; k < nbytes; ++k)
        if (b[k] > 1) throw bad("tensor \"" + en.name + "\" is BOOL but holds the byte " + std::to_string(b[k]));
    }
    out.tensors.emplace_back(en.name, std::move(t));
  }
  return out;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    const int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

inline std::string errno_str() { return std::strerror(errno); }

inline void write_all(int fd, const void* data, std::size_t n, const std::string& where) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t(1) << 30);
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(where + ": write failed: " + errno_str());
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace serialize_detail

using NamedTensorList = std::vector<std::pair<std::string, Tensor>>;

/// A parsed safetensors file: the tensors (in data order) and the metadata map.
struct SafetensorsFile {
  NamedTensorList tensors;
  std::map<std::string, std::string> metadata;
  /// The tensors by name (sorted by name).
  std::map<std::string, Tensor> as_map() const {
    return std::map<std::string, Tensor>(tensors.begin(), tensors.end());
  }
};

/// Parses an in-memory safetensors file (`where` names it in error messages).
inline SafetensorsFile parse_safetensors(const void* data, std::size_t size, const std::string& where = "<buffer>") {
  const char* base = static_cast<const char*>(data);
  auto p = serialize_detail::parse(
      size, [&](uint64_t off, std::size_t n, void* dst) { std::memcpy(dst, base + off, n); }, where);
  return SafetensorsFile{std::move(p.tensors), std::move(p.metadata)};
}

/// Reads a safetensors file with its metadata.
inline SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("load_safetensors: cannot open '" + path + "'");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) throw std::runtime_error("load_safetensors: cannot determine the size of '" + path + "'");
  in.seekg(0, std::ios::beg);
  auto reader = [&](uint64_t off, std::size_t n, void* dst) {
    in.seekg(static_cast<std::streamoff>(off), std::ios::beg);
    in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (!in || static_cast<std::size_t>(in.gcount()) != n)
      throw std::runtime_error("load_safetensors: read error in '" + path + "'");
  };
  auto p = serialize_detail::parse(static_cast<uint64_t>(size), reader, "'" + path + "'");
  return SafetensorsFile{std::move(p.tensors), std::move(p.metadata)};
}

/// The tensors of a safetensors file by name.
inline std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  return read_safetensors(path).as_map();
}

/// The bytes of a safetensors file holding `tensors` (in order; names unique, not
/// "__metadata__") and `metadata`.
inline std::string serialize_safetensors(const NamedTensorList& tensors,
                                         const std::map<std::string, std::string>& metadata = {}) {
  using serialize_detail::json_string;
  serialize_detail::check_little_endian();
  std::set<std::string> seen;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : metadata) {
      if (!first) header += ",";
      first = false;
      header += json_string(kv.first) + ":" + json_string(kv.second);
    }
    header += "}";
  }
  uint64_t offset = 0;
  std::vector<Tensor> data;
  for (const auto& nt : tensors) {
    const std::string& name = nt.first;
    if (name == "__metadata__") throw std::invalid_argument("save_safetensors: the name __metadata__ is reserved");
    if (!seen.insert(name).second) throw std::invalid_argument("save_safetensors: duplicate tensor name \"" + name + "\"");
    if (!nt.second.defined()) throw std::invalid_argument("save_safetensors: tensor \"" + name + "\" is undefined");
    Tensor t = nt.second.contiguous_data();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    if (header.size() > 1) header += ",";
    header += json_string(name) + ":{\"dtype\":\"" + serialize_detail::st_dtype_name(t.dtype()) + "\",\"shape\":[";
    for (std::size_t k = 0; k < t.shape().size(); ++k) header += (k ? "," : "") + std::to_string(t.shape()[k]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
    data.push_back(std::move(t));
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out;
  out.reserve(8 + header.size() + static_cast<std::size_t>(offset));
  uint64_t n = header.size();
  for (int k = 0; k < 8; ++k) out += static_cast<char>((n >> (8 * k)) & 0xFF);
  out += header;
  for (const Tensor& t : data)
    out.append(static_cast<const char*>(t.raw_data()), static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype()));
  return out;
}

/// Writes `tensors` and `metadata` to `path` atomically: a temporary file in the same folder is
/// written, fsync'ed and renamed over `path` (a crash leaves any previous file intact).
inline void save_safetensors(const std::string& path, const NamedTensorList& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  using namespace serialize_detail;
  const std::string bytes = serialize_safetensors(tensors, metadata);
  const std::size_t slash = path.find_last_of('/');
  const std::string folder = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmpl = (folder == "/" ? "" : folder) + "/." + base + ".XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  Fd fd(::mkstemp(name.data()));
  if (fd.get() < 0) throw std::runtime_error("save_safetensors: cannot create a temporary file beside '" + path + "': " + errno_str());
  const std::string tmp(name.data());
  try {
    struct stat st;
    ::fchmod(fd.get(), ::stat(path.c_str(), &st) == 0 ? (st.st_mode & 0777) : 0644);
    write_all(fd.get(), bytes.data(), bytes.size(), "save_safetensors '" + path + "'");
    if (::fsync(fd.get()) != 0) throw std::runtime_error("save_safetensors: fsync failed for '" + path + "': " + errno_str());
    if (::close(fd.release()) != 0) throw std::runtime_error("save_safetensors: close failed for '" + path + "': " + errno_str());
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      throw std::runtime_error("save_safetensors: cannot rename onto '" + path + "': " + errno_str());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  const int dfd = ::open(folder.c_str(), O_RDONLY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

/// Parameters then buffers of `layer` by dotted name (what Python's state_dict() holds).
inline NamedTensorList state_dict(const nn::Layer& layer) {
  NamedTensorList out = layer.named_parameters();
  for (auto& b : layer.named_buffers()) out.push_back(b);
  return out;
}

/// Copies `sd[prefix + name]` into each parameter and buffer of `layer` (in place, under no-grad,
/// converting the dtype if needed). Strict: a missing or (under `prefix`) unexpected name, or a
/// shape mismatch, throws std::invalid_argument listing them, and nothing is copied.
inline void load_state_dict(nn::Layer& layer, const std::map<std::string, Tensor>& sd, bool strict = true,
                            const std::string& prefix = "") {
  const NamedTensorList own = state_dict(layer);
  std::set<std::string> own_names;
  std::string missing, unexpected, mismatched;
  std::vector<std::pair<Tensor, Tensor>> todo;
  for (const auto& nt : own) {
    own_names.insert(prefix + nt.first);
    auto it = sd.find(prefix + nt.first);
    if (it == sd.end()) {
      missing += (missing.empty() ? "" : ", ") + ("\"" + prefix + nt.first + "\"");
      continue;
    }
    if (it->second.shape() != nt.second.shape()) {
      mismatched += (mismatched.empty() ? "" : ", ") + (prefix + nt.first) + ": checkpoint " +
                    shape_str(it->second.shape()) + " vs model " + shape_str(nt.second.shape());
      continue;
    }
    todo.emplace_back(nt.second, it->second);
  }
  for (const auto& kv : sd)
    if (kv.first.compare(0, prefix.size(), prefix) == 0 && !own_names.count(kv.first))
      unexpected += (unexpected.empty() ? "" : ", ") + ("\"" + kv.first + "\"");
  std::string err;
  if (!mismatched.empty()) err += "size mismatch for " + mismatched + ". ";
  if (strict && !missing.empty()) err += "Missing key(s): " + missing + ". ";
  if (strict && !unexpected.empty()) err += "Unexpected key(s): " + unexpected + ". ";
  if (!err.empty()) throw std::invalid_argument("load_state_dict for " + layer.name() + ": " + err);
  NoGradGuard no_grad;
  for (auto& pr : todo) {
    Tensor::copy_into(pr.first, pr.second);
    pr.first.bump_version();
  }
}

/// Saves `layer`'s parameters and buffers to `path` (safetensors, atomic).
inline void save_layer(const nn::Layer& layer, const std::string& path,
                       const std::map<std::string, std::string>& metadata = {}) {
  save_safetensors(path, state_dict(layer), metadata);
}

/// Loads `path` into `layer` (see load_state_dict; `prefix` selects e.g. "model." of a checkpoint).
inline void load_layer(nn::Layer& layer, const std::string& path, bool strict = true, const std::string& prefix = "") {
  load_state_dict(layer, load_safetensors(path), strict, prefix);
}

}  // namespace nablagrad
