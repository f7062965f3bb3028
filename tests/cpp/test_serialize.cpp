// Tests of serialize.h: safetensors round trips, a file made by Python's safetensors package,
// strict rejection of malformed files (and a fuzz: truncations and byte flips only throw),
// atomic saves and load_state_dict into layers.
#include <nablagrad/nablagrad.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <unistd.h>

#include "test_util.h"

using namespace nablagrad;

namespace {

std::string le64(uint64_t n) {
  std::string s;
  for (int k = 0; k < 8; ++k) s += static_cast<char>((n >> (8 * k)) & 0xFF);
  return s;
}

std::string with_header(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// Bytes of safetensors.numpy.save({"w": float32 [[1.5,-2],[3,0.25]], "n": int64 7 (0-d),
// "m": bool [T,F,T], "d": float64 [0.1]}, metadata={"format": "np"}) (safetensors 0.8).
std::string python_fixture() {
  const std::string header =
      R"({"__metadata__":{"format":"np"},"n":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("d":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},"w":{"dtype":"F32","shape":[2,2],)"
      R"("data_offsets":[16,32]},"m":{"dtype":"BOOL","shape":[3],"data_offsets":[32,35]}}     )";
  const std::string data(
      "\x07\x00\x00\x00\x00\x00\x00\x00\x9a\x99\x99\x99\x99\x99\xb9\x3f\x00\x00\xc0\x3f\x00\x00\x00\xc0"
      "\x00\x00\x40\x40\x00\x00\x80\x3e\x01\x00\x01",
      35);
  return with_header(header, data);
}

std::string tmp_path(const std::string& name) {
  return "/tmp/ng_test_serialize_" + std::to_string(::getpid()) + "_" + name + ".safetensors";
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.item_at(i) != b.item_at(i)) return false;
  return true;
}

void test_python_fixture() {
  const std::string bytes = python_fixture();
  CHECK(bytes.size() == 8 + 256 + 35);
  SafetensorsFile f = parse_safetensors(bytes.data(), bytes.size());
  CHECK(f.metadata.size() == 1 && f.metadata.at("format") == "np");
  auto m = f.as_map();
  CHECK(m.size() == 4);
  CHECK(m.at("n").dtype() == DType::Int64 && m.at("n").dim() == 0 && m.at("n").item<int64_t>() == 7);
  CHECK(m.at("d").dtype() == DType::Float64 && m.at("d").item_at(0) == 0.1);
  const Tensor& w = m.at("w");
  CHECK(w.dtype() == DType::Float32 && w.shape() == Shape({2, 2}));
  CHECK(w.item_at(0) == 1.5 && w.item_at(1) == -2.0 && w.item_at(2) == 3.0 && w.item_at(3) == 0.25);
  const Tensor& b = m.at("m");
  CHECK(b.dtype() == DType::Bool && b.item_at(0) == 1 && b.item_at(1) == 0 && b.item_at(2) == 1);
  // Our writer, given the same tensors in data order, reproduces the bytes (up to key order
  // of the header, which is also the same here).
  const std::string again = serialize_safetensors(f.tensors, f.metadata);
  CHECK(again == bytes);
}

void test_round_trip_file() {
  manual_seed(3);
  NamedTensorList tensors = {
      {"a.weight", randn({3, 4})},
      {"a.bias", randn({4}, DType::Float64)},
      {"idx", Tensor::from_vector(std::vector<int64_t>{-5, 0, 1LL << 40}, {3})},
      {"mask", Tensor::from_vector(std::vector<bool>{true, false}, {2, 1})},
      {"count", Tensor::scalar(12, DType::Int64)},
      {"empty", Tensor::zeros({0, 3})},
      {"weird \"name\"\n\\", Tensor::full({2}, 1.25)},
  };
  // A non-contiguous view is written as its values.
  Tensor base = randn({3, 5});
  tensors.emplace_back("view", base.transpose(0, 1));
  const std::string path = tmp_path("rt");
  save_safetensors(path, tensors, {{"k", "v \"quoted\" \xc3\xa9"}});
  SafetensorsFile f = read_safetensors(path);
  CHECK(f.metadata.at("k") == "v \"quoted\" \xc3\xa9");
  auto m = f.as_map();
  CHECK(m.size() == tensors.size());
  for (const auto& nt : tensors) CHECK(m.count(nt.first) && same_tensor(m.at(nt.first), nt.second));
  CHECK(f.tensors.size() == tensors.size());
  // Overwriting is atomic and leaves no temporary files behind; the old contents are replaced.
  save_safetensors(path, {{"x", Tensor::full({1}, 2.0)}});
  auto m2 = load_safetensors(path);
  CHECK(m2.size() == 1 && m2.at("x").item_at(0) == 2.0);
  std::remove(path.c_str());
  CHECK_THROWS(load_safetensors(path), std::runtime_error);
  CHECK_THROWS(save_safetensors("/nonexistent-dir-ng/x.safetensors", tensors), std::runtime_error);
  CHECK_THROWS(save_safetensors(path, {{"a", Tensor::zeros({1})}, {"a", Tensor::zeros({1})}}), std::invalid_argument);
  CHECK_THROWS(save_safetensors(path, {{"__metadata__", Tensor::zeros({1})}}), std::invalid_argument);
}

void expect_invalid(const std::string& bytes, const char* what) {
  ++test_util::checks();
  try {
    parse_safetensors(bytes.data(), bytes.size(), what);
    ++test_util::failures();
    std::printf("expected std::invalid_argument for %s\n", what);
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(what) == std::string::npos) {
      ++test_util::failures();
      std::printf("message does not name the source: %s\n", e.what());
    }
  }
}

void test_malformed() {
  const std::string ok = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  CHECK(parse_safetensors(with_header(ok, data).data(), 8 + ok.size() + 8).tensors.size() == 1);
  expect_invalid("", "empty");
  expect_invalid("\x05\0\0", "short");
  expect_invalid(le64(1000) + "{}", "long header length");
  expect_invalid(le64(uint64_t(1) << 62) + "{}", "huge header length");
  expect_invalid(with_header("[]", ""), "not an object");
  expect_invalid(with_header("{", ""), "unterminated");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(7, '\0')),
                 "truncated data");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(9, '\0')),
                 "extra data");
  expect_invalid(with_header(R"({"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0')),
                 "unsupported dtype");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data), "byte count");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data), "negative dim");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data), "float dim");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data), "reversed");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data), "outside");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
                 "overlap");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data), "gap");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("x":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})", data),
                 "duplicate");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                             R"("data_offsets":[0,8]}})", data),
                 "overflow shape");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}})", data),
                 "big integer");
  expect_invalid(with_header(R"({"x":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x07", 2)),
                 "bool byte");
  expect_invalid(with_header(R"({"__metadata__":{"a":1}})", ""), "metadata not string");
  expect_invalid(with_header(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"extra":1}})", ""),
                 "unknown field");
  expect_invalid(with_header(R"({"x":"\ud800"})", ""), "surrogate");
  expect_invalid(with_header(std::string(200, '[') + std::string(200, ']'), ""), "deep nesting");
  // Escapes decode (a name with \u00e9 and a surrogate pair).
  const std::string esc = R"({"\u00e9\ud83d\ude00\n":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})";
  auto f = parse_safetensors(with_header(esc, data).data(), 8 + esc.size() + 8);
  CHECK(f.tensors.size() == 1 && f.tensors[0].first == "\xc3\xa9\xf0\x9f\x98\x80\n");
}

void test_fuzz() {
  const std::string base = python_fixture();
  int parsed = 0, rejected = 0;
  // Every truncation: all rejected.
  for (std::size_t cut = 0; cut < base.size(); ++cut) {
    try {
      parse_safetensors(base.data(), cut);
      ++parsed;
    } catch (const std::invalid_argument&) {
      ++rejected;
    }
  }
  CHECK(parsed == 0 && rejected == static_cast<int>(base.size()));
  // Random byte flips (anywhere, including the length): never a crash, only invalid_argument.
  std::mt19937 rng(1234);
  int other = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::string b = base;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const std::size_t pos = rng() % b.size();
      b[pos] = static_cast<char>(rng() & 0xFF);
    }
    if (rng() % 8 == 0) b.resize(rng() % b.size());
    try {
      parse_safetensors(b.data(), b.size());
    } catch (const std::invalid_argument&) {
    } catch (...) {
      ++other;
    }
  }
  CHECK(other == 0);
}

void test_layers() {
  manual_seed(0);
  nn::Sequential src(nn::Conv2D(nn::Conv2dOptions(3, 4, 3).padding(1).activation("relu")),
                     nn::BatchNorm2D(4), nn::Flatten(), nn::Linear(4 * 5 * 5, 2));
  // Put some state into the batch norm buffers.
  Tensor x = randn({2, 5, 5, 3});
  src.train();
  { NoGradGuard g; src.forward(x); }
  src.eval();
  const std::string path = tmp_path("layers");
  save_layer(src, path);
  manual_seed(1);
  nn::Sequential dst(nn::Conv2D(nn::Conv2dOptions(3, 4, 3).padding(1).activation("relu")),
                     nn::BatchNorm2D(4), nn::Flatten(), nn::Linear(4 * 5 * 5, 2));
  dst.eval();
  Tensor y0, y1;
  {
    NoGradGuard g;
    y0 = src.forward(x);
    CHECK(!same_tensor(dst.forward(x), y0));
    load_layer(dst, path);
    y1 = dst.forward(x);
  }
  CHECK(same_tensor(y0, y1));
  auto sd = load_safetensors(path);
  CHECK(sd.count("1.num_batches_tracked") && sd.at("1.num_batches_tracked").item<int64_t>() == 1);
  CHECK(dst.named_buffers()[2].second.item<int64_t>() == 1);
  // Strictness: a missing name, an unexpected one, a wrong shape; nothing is copied on error.
  nn::Linear lin(3, 2);
  auto lin_sd = std::map<std::string, Tensor>{{"weight", Tensor::zeros({2, 3})}};
  CHECK_THROWS(load_state_dict(lin, lin_sd), std::invalid_argument);
  CHECK(lin.named_parameters()[0].second.item_at(0) != 0.0);
  load_state_dict(lin, lin_sd, /*strict=*/false);
  CHECK(lin.named_parameters()[0].second.item_at(0) == 0.0);
  lin_sd["bias"] = Tensor::zeros({2});
  lin_sd["extra"] = Tensor::zeros({2});
  CHECK_THROWS(load_state_dict(lin, lin_sd), std::invalid_argument);
  lin_sd.erase("extra");
  lin_sd["bias"] = Tensor::zeros({3});
  CHECK_THROWS(load_state_dict(lin, lin_sd, false), std::invalid_argument);
  // Prefix: a nested checkpoint's "model." entries.
  std::map<std::string, Tensor> ckpt = {{"model.weight", Tensor::full({2, 3}, 0.5)},
                                        {"model.bias", Tensor::full({2}, -1.0)},
                                        {"optim.state.0.step", Tensor::scalar(3)}};
  load_state_dict(lin, ckpt, true, "model.");
  CHECK(lin.named_parameters()[1].second.item_at(1) == -1.0);
  std::remove(path.c_str());
}

}  // namespace

int main() {
  test_python_fixture();
  test_round_trip_file();
  test_malformed();
  test_fuzz();
  test_layers();
  return test_util::finish();
}
