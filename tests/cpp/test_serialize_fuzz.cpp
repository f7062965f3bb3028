// Structured fuzz of the safetensors reader (serialize.h), beside test_serialize.cpp's byte flips:
// deterministic mutation loops over files made by serialize_safetensors: header lengths (huge,
// zero, off by one), JSON token edits (numbers replaced by huge/negative/off-by-one values,
// dtype names swapped, shape entries changed, offsets outside the file, overlapping, reversed),
// truncations at every byte, garbage appended, and the same through the file reader
// (read_safetensors). Every input is parsed from an exactly sized heap buffer, so an
// out-of-bounds read is an AddressSanitizer report (build with the `debug` preset). The reader
// must either return tensors whose byte counts agree with their shapes or throw
// std::invalid_argument; nothing else.
#include <nablagrad/nablagrad.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.h"

using namespace nablagrad;

namespace {

struct Outcome {
  int parsed = 0, rejected = 0, other = 0;
};

// Parses `bytes` from a heap buffer of exactly its size.
void parse_exact(const std::string& bytes, Outcome& out) {
  std::unique_ptr<char[]> buf(new char[bytes.size() ? bytes.size() : 1]);
  if (!bytes.empty()) std::memcpy(buf.get(), bytes.data(), bytes.size());
  try {
    SafetensorsFile f = parse_safetensors(buf.get(), bytes.size(), "<fuzz>");
    ++out.parsed;
    for (const auto& nt : f.tensors) {
      const Tensor& t = nt.second;
      int64_t n = 1;
      for (int64_t s : t.shape()) n *= s;
      if (n != t.numel()) ++out.other;
      if (t.numel() > 0 && t.raw_data() == nullptr) ++out.other;
    }
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find("<fuzz>") == std::string::npos) ++out.other;  // names the file
    ++out.rejected;
  } catch (...) {
    ++out.other;
  }
}

std::string le64(uint64_t n) {
  std::string s;
  for (int k = 0; k < 8; ++k) s += static_cast<char>((n >> (8 * k)) & 0xFF);
  return s;
}

std::string header_of(const std::string& file) {
  uint64_t n = 0;
  for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(file[static_cast<std::size_t>(k)]);
  return file.substr(8, static_cast<std::size_t>(n));
}

std::string data_of(const std::string& file) { return file.substr(8 + header_of(file).size()); }

std::vector<std::string> seeds() {
  std::vector<std::string> out;
  out.push_back(serialize_safetensors({{"w", Tensor::full({2, 3}, 1.5)},
                                       {"b", Tensor::zeros({3}, DType::Float64)},
                                       {"n", Tensor::full({}, 7.0, DType::Int64)},
                                       {"m", Tensor::full({4}, 1.0, DType::Bool)},
                                       {"e", Tensor::zeros({0, 5})}},
                                      {{"format", "pt"}, {"nablagrad.structure", "{\"version\":1}"}}));
  out.push_back(serialize_safetensors({{"model.0.weight", Tensor::full({4, 1, 1, 2}, -2.0)}}));
  out.push_back(serialize_safetensors({}));
  return out;
}

// Positions of the digit runs and of the string values in a header.
std::vector<std::pair<std::size_t, std::size_t>> tokens(const std::string& h, bool digits) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (std::size_t i = 0; i < h.size();) {
    if (digits && h[i] >= '0' && h[i] <= '9') {
      std::size_t j = i;
      while (j < h.size() && h[j] >= '0' && h[j] <= '9') ++j;
      out.emplace_back(i, j - i);
      i = j;
    } else if (!digits && h[i] == '"') {
      std::size_t j = i + 1;
      while (j < h.size() && h[j] != '"') ++j;
      out.emplace_back(i + 1, j - i - 1);
      i = j + 1;
    } else {
      ++i;
    }
  }
  return out;
}

const char* const kNumbers[] = {"0", "1", "7", "8", "9", "18446744073709551615", "18446744073709551616",
                                "9223372036854775807", "9223372036854775808", "-1", "-0", "1e3", "1.5",
                                "4294967296", "99999999999999999999999", "00", "2305843009213693952"};
const char* const kStrings[] = {"F32", "F64", "I64", "BOOL", "F16", "BF16", "U8", "I32", "", "shape",
                                "data_offsets", "dtype", "__metadata__", "w", "\\u0000", "\\ud800", "\\"};

void test_structured_mutations() {
  Outcome out;
  std::mt19937 rng(20261202);
  int cases = 0;
  for (const std::string& seed : seeds()) {
    const std::string h = header_of(seed), data = data_of(seed);
    const auto nums = tokens(h, true), strs = tokens(h, false);
    // every number replaced by each odd value; every string by each odd name
    for (const auto& tk : nums)
      for (const char* v : kNumbers) {
        std::string h2 = h;
        h2.replace(tk.first, tk.second, v);
        parse_exact(le64(h2.size()) + h2 + data, out);
        ++cases;
      }
    for (const auto& tk : strs)
      for (const char* v : kStrings) {
        std::string h2 = h;
        h2.replace(tk.first, tk.second, v);
        parse_exact(le64(h2.size()) + h2 + data, out);
        ++cases;
      }
    // header lengths: huge, zero, off by a few, the whole file
    for (uint64_t n : {uint64_t(0), uint64_t(1), uint64_t(2), uint64_t(h.size() - 1), uint64_t(h.size() + 1),
                       uint64_t(h.size() + data.size()), uint64_t(h.size() + data.size() + 1), uint64_t(1) << 32,
                       uint64_t(100000001), ~uint64_t(0), ~uint64_t(0) - 7, uint64_t(1) << 63}) {
      parse_exact(le64(n) + h + data, out);
      ++cases;
    }
    // every truncation, and garbage appended
    for (std::size_t cut = 0; cut < seed.size(); ++cut) {
      parse_exact(seed.substr(0, cut), out);
      ++cases;
    }
    for (const char* tail : {"\x00", "garbage", "\xff\xff\xff\xff\xff\xff\xff\xff"}) {
      parse_exact(seed + tail, out);
      ++cases;
    }
    // random combinations: 1-3 token edits plus maybe a cut or a flip
    for (int trial = 0; trial < 3000; ++trial) {
      std::string h2 = h;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits; ++e) {
        const auto toks = tokens(h2, rng() % 2 == 0);
        if (toks.empty()) continue;
        const auto& tk = toks[rng() % toks.size()];
        if (rng() % 2)
          h2.replace(tk.first, tk.second, kNumbers[rng() % (sizeof kNumbers / sizeof *kNumbers)]);
        else
          h2.replace(tk.first, tk.second, kStrings[rng() % (sizeof kStrings / sizeof *kStrings)]);
      }
      std::string file = le64(rng() % 16 == 0 ? rng() : h2.size()) + h2 + data;
      if (rng() % 4 == 0 && !file.empty()) file[rng() % file.size()] = static_cast<char>(rng() & 0xFF);
      if (rng() % 6 == 0) file.resize(rng() % (file.size() + 1));
      parse_exact(file, out);
      ++cases;
    }
  }
  // deep nesting and long strings in the header
  for (int depth : {10, 64, 65, 1000, 100000}) {
    std::string h = "{\"__metadata__\":" + std::string(static_cast<std::size_t>(depth), '[') +
                    std::string(static_cast<std::size_t>(depth), ']') + "}";
    parse_exact(le64(h.size()) + h, out);
    ++cases;
  }
  std::printf("structured mutations: %d cases, %d parsed, %d rejected, %d other\n", cases, out.parsed,
              out.rejected, out.other);
  CHECK(cases > 5000);
  CHECK(out.other == 0);
  CHECK(out.parsed > 0 && out.rejected > 0);
}

// The file reader: truncated files, huge header lengths, a directory, a missing file.
void test_file_reader() {
  const std::string path = "/tmp/ng_serialize_fuzz_" + std::to_string(::getpid()) + ".safetensors";
  const std::string seed = seeds()[0];
  int other = 0, cases = 0;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    std::string b = seed;
    if (trial % 3 == 0) b.resize(rng() % b.size());
    if (trial % 3 == 1) b.replace(0, 8, le64(trial % 2 ? ~uint64_t(0) >> (rng() % 64) : rng()));
    if (trial % 3 == 2) b[8 + rng() % (b.size() - 8)] = static_cast<char>(rng());
    {
      std::FILE* f = std::fopen(path.c_str(), "wb");
      CHECK(f != nullptr);
      if (!f) return;
      std::fwrite(b.data(), 1, b.size(), f);
      std::fclose(f);
    }
    ++cases;
    try {
      read_safetensors(path);
    } catch (const std::invalid_argument&) {
    } catch (...) {
      ++other;
    }
  }
  std::remove(path.c_str());
  CHECK_THROWS(read_safetensors(path), std::runtime_error);  // missing
  CHECK_THROWS(read_safetensors("/tmp"), std::exception);    // a directory
  std::printf("file reader: %d cases, %d other\n", cases, other);
  CHECK(other == 0);
}

// A save that fails (unwritable folder) leaves no file and no temporary behind.
void test_failed_save_leaves_nothing() {
  CHECK_THROWS(save_safetensors("/nonexistent_dir_ng/x.safetensors", {{"w", Tensor::zeros({2})}}),
               std::runtime_error);
  CHECK_THROWS(save_safetensors("/tmp/ng_dup.safetensors", {{"w", Tensor::zeros({2})}, {"w", Tensor::zeros({2})}}),
               std::invalid_argument);
  CHECK(::access("/tmp/ng_dup.safetensors", F_OK) != 0);
}

}  // namespace

int main() {
  test_structured_mutations();
  test_file_reader();
  test_failed_save_leaves_nothing();
  return test_util::finish();
}
