// examples/cpp/train_digits.cpp - a small CNN learns handwritten digits, in C++ with only the
// nablagrad headers.
//
//     g++ -std=c++17 -O2 -pthread -I cpp/include examples/cpp/train_digits.cpp -o train_digits
//     gunzip -c python/nablagrad/datasets/digits.csv.gz | ./train_digits -      # or:
//     gunzip -c python/nablagrad/datasets/digits.csv.gz > digits.csv && ./train_digits digits.csv
//
// Arguments: the CSV file ("-" reads standard input), then optionally the number of epochs
// (default 15). The data is the UCI 8x8 digits set shipped with the Python package
// (python/nablagrad/datasets/digits.csv.gz, 1797 rows of 64 pixel values 0..16 and a label;
// see python/nablagrad/datasets/__init__.py). It stays gzipped in the repository; the
// example reads the plain CSV so that it needs no zlib.
//
// Model (NHWC): Conv2D 1->8 3x3 "same" + ReLU -> MaxPool2D 2 -> Flatten -> Linear 128->10,
// trained with Adam on the cross-entropy for a few seconds. 360 shuffled images are held out;
// the program prints the loss of every epoch and the held-out accuracy, and exits with
// status 1 when that accuracy is below 0.9.
#include <nablagrad/nablagrad.h>
#include <nablagrad/optim.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace nablagrad;

namespace {

constexpr int64_t kPixels = 64;  // 8x8, one channel

struct Digits {
  std::vector<float> images;    // n x 64, scaled to [0, 1]
  std::vector<int64_t> labels;  // n
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

/// `s` with bytes other than printable ASCII shown as '?' (for error messages).
std::string printable(std::string s) {
  for (char& c : s)
    if (c < 32 || c > 126) c = '?';
  return s;
}

/// Reads the CSV: every line holds 64 pixel values (0..16) and the label (0..9).
Digits read_digits(std::istream& in, const std::string& source) {
  Digits d;
  std::string line;
  int64_t row = 0;
  while (std::getline(in, line)) {
    ++row;
    if (line.empty()) continue;
    const std::string where = source + ": line " + std::to_string(row);
    std::stringstream fields(line);
    std::string field;
    std::vector<double> values;
    while (std::getline(fields, field, ',')) {
      char* end = nullptr;
      const double v = std::strtod(field.c_str(), &end);
      if (field.empty() || *end != '\0' || !(v >= 0 && v <= 16))
        throw std::runtime_error(where + ": '" + printable(field.substr(0, 20)) + "' is not a number in 0..16");
      values.push_back(v);
    }
    if (values.size() != kPixels + 1)
      throw std::runtime_error(where + " has " + std::to_string(values.size()) +
                               " values, expected 65 (64 pixels and a label)");
    const double label = values[kPixels];
    if (label != static_cast<int64_t>(label) || label > 9)
      throw std::runtime_error(where + ": the label " + std::to_string(label) + " is not a digit 0..9");
    for (int64_t i = 0; i < kPixels; ++i) d.images.push_back(static_cast<float>(values[i] / 16.0));
    d.labels.push_back(static_cast<int64_t>(label));
  }
  if (d.labels.empty()) throw std::runtime_error(source + ": no data (is it the uncompressed CSV?)");
  return d;
}

/// The images and labels at `rows`, as an NHWC batch (n, 8, 8, 1) and int64 labels (n,).
std::pair<Tensor, Tensor> batch(const Digits& d, const std::vector<int64_t>& rows) {
  std::vector<float> x;
  std::vector<int64_t> y;
  x.reserve(rows.size() * kPixels);
  for (int64_t r : rows) {
    x.insert(x.end(), d.images.begin() + r * kPixels, d.images.begin() + (r + 1) * kPixels);
    y.push_back(d.labels[static_cast<std::size_t>(r)]);
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  return {Tensor::from_vector(x, {n, 8, 8, 1}), Tensor(y)};
}

/// Fisher-Yates with std::mt19937 (whose output the standard fixes), so every platform
/// draws the same split and batches.
void shuffle(std::vector<int64_t>& v, std::mt19937& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

/// Fraction of `rows` whose largest logit is the label.
double accuracy(nn::Layer& model, const Digits& d, const std::vector<int64_t>& rows) {
  NoGradGuard no_grad;
  model.eval();
  const auto xy = batch(d, rows);
  const Tensor logits = model(xy.first).contiguous();
  model.train();
  const float* p = logits.data<float>();
  const int64_t classes = logits.size(1);
  int64_t correct = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const float* row = p + static_cast<int64_t>(i) * classes;
    const int64_t guess = std::max_element(row, row + classes) - row;
    correct += guess == xy.second.data<int64_t>()[i];
  }
  return static_cast<double>(correct) / static_cast<double>(rows.size());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " DIGITS_CSV|- [EPOCHS]\n"
              << "  e.g. gunzip -c python/nablagrad/datasets/digits.csv.gz | " << argv[0] << " -\n";
    return 2;
  }
  const std::string path = argv[1];
  int epochs = 15;
  Digits data;
  try {
    if (argc == 3) {
      std::size_t used = 0;
      epochs = std::stoi(argv[2], &used);
      if (used != std::string(argv[2]).size() || epochs < 0) throw std::invalid_argument("");
    }
  } catch (const std::exception&) {
    std::cerr << "train_digits: EPOCHS must be a non-negative integer, got '" << argv[2] << "'\n";
    return 2;
  }
  try {
    if (path == "-") {
      data = read_digits(std::cin, "<stdin>");
    } else {
      std::ifstream file(path);
      if (!file) throw std::runtime_error("cannot open " + path);
      data = read_digits(file, path);
    }
  } catch (const std::exception& e) {
    std::cerr << "train_digits: " << e.what() << "\n";
    return 2;
  }

  // Hold out 360 shuffled images; train on the rest.
  std::mt19937 rng(0);
  std::vector<int64_t> order(static_cast<std::size_t>(data.size()));
  for (int64_t i = 0; i < data.size(); ++i) order[static_cast<std::size_t>(i)] = i;
  shuffle(order, rng);
  const std::vector<int64_t> test(order.begin(), order.begin() + 360);
  std::vector<int64_t> train(order.begin() + 360, order.end());
  std::cout << "digits: " << train.size() << " train / " << test.size() << " held-out images (8x8x1, NHWC)\n";

  manual_seed(0);  // the layers' initial weights
  nn::Sequential model(
      nn::Conv2D(nn::Conv2dOptions(1, 8, 3).padding("same").activation("relu")),  // (N, 8, 8, 8)
      nn::MaxPool2D(2),                                                          // (N, 4, 4, 8)
      nn::Flatten(),                                                             // (N, 128)
      nn::Linear(4 * 4 * 8, 10));                                                // logits (N, 10)
  std::cout << model.repr() << "\n";
  optim::Adam optimizer(model.parameters(), optim::AdamOptions(1e-2));

  const std::size_t batch_size = 32;
  const auto start = std::chrono::steady_clock::now();
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    shuffle(train, rng);
    double total = 0;
    int batches = 0;
    for (std::size_t i = 0; i < train.size(); i += batch_size) {
      const std::vector<int64_t> rows(train.begin() + i, train.begin() + std::min(i + batch_size, train.size()));
      const auto xy = batch(data, rows);
      Tensor loss = cross_entropy(model(xy.first), xy.second);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      total += loss.item<double>();
      ++batches;
    }
    std::printf("epoch %2d  loss %.4f  held-out acc %.4f\n", epoch, total / batches, accuracy(model, data, test));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double acc = accuracy(model, data, test);
  std::printf("held-out accuracy: %.4f (%d/%zu) after %d epochs in %.1f s\n", acc,
              static_cast<int>(acc * static_cast<double>(test.size()) + 0.5), test.size(), epochs, seconds);
  return acc >= 0.9 ? 0 : 1;
}
