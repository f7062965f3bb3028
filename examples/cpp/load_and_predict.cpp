// examples/cpp/load_and_predict.cpp - runs a model trained and saved in Python (ng.save) in C++.
//
//     g++ -std=c++17 -O2 -pthread -I cpp/include examples/cpp/load_and_predict.cpp -o load_and_predict
//     ./load_and_predict model.safetensors inputs.safetensors [out.safetensors]
//
// The Python side (see tests/python/test_io.py::test_cpp_loads_python_model):
//
//     model = ng.nn.Sequential(ng.nn.Conv2d(1, 4, 3, padding=1), ng.nn.ReLU(), ng.nn.MaxPool2d(2),
//                              ng.nn.Flatten(), ng.nn.Linear(4 * 4 * 4, 3))
//     ...train...
//     ng.save({"model": model.state_dict(), "epoch": 5}, "model.safetensors")
//     ng.save({"x": x}, "inputs.safetensors")     # x: (N, 8, 8, 1) float32, NHWC
//
// The program builds the same layers, loads the "model." entries of the checkpoint (strict:
// every name and shape must match), and prints the predictions, one row per sample, with 9
// significant digits; with a third argument it also saves them there as {"y": ...}.
#include <nablagrad/layers/activation.h>
#include <nablagrad/layers/container.h>
#include <nablagrad/layers/conv.h>
#include <nablagrad/layers/linear.h>
#include <nablagrad/layers/pooling.h>
#include <nablagrad/serialize.h>

#include <cstdio>
#include <exception>

using namespace nablagrad;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s model.safetensors inputs.safetensors [out.safetensors]\n", argv[0]);
    return 2;
  }
  try {
    nn::Sequential model(nn::Conv2D(nn::Conv2dOptions(1, 4, 3).padding(1)), nn::ReLU(), nn::MaxPool2D(2),
                         nn::Flatten(), nn::Linear(4 * 4 * 4, 3));
    model.eval();
    SafetensorsFile ckpt = read_safetensors(argv[1]);
    load_state_dict(model, ckpt.as_map(), /*strict=*/true, /*prefix=*/"model.");
    auto inputs = load_safetensors(argv[2]);
    const Tensor x = inputs.at("x");
    Tensor y;
    {
      NoGradGuard no_grad;
      y = model.forward(x).contiguous_data();
    }
    const int64_t n = y.size(0), k = y.size(1);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) std::printf(j ? " %.9g" : "%.9g", y.item_at(i * k + j));
      std::printf("\n");
    }
    if (argc > 3) save_safetensors(argv[3], {{"y", y}}, {{"producer", "load_and_predict.cpp"}});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
