// nablagrad/layers/dropout.h - the Dropout layer (torch.nn.Dropout).
//
//     nn::Dropout drop(0.5);
//     Tensor y = drop.forward(x);   // training: zero with probability p, scale by 1/(1-p)
//     drop.eval();                  // evaluation: the identity (returns x itself)
//
// The mask comes from the seeded default generator (manual_seed makes it reproducible).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"

namespace nablagrad {
namespace nn {

class Dropout : public Layer {
 public:
  explicit Dropout(double p = 0.5) : p_(p) {
    if (!(p >= 0.0 && p <= 1.0))
      throw std::invalid_argument("Dropout: p must be in [0, 1], got " + std::to_string(p));
  }
  Tensor forward(const Tensor& x) override {
    if (!is_training()) return x;
    return dropout(x, p_);
  }
  std::string name() const override { return "Dropout"; }
  std::string extra_repr() const override {
    std::ostringstream s;
    s << "p=" << p_;
    return s.str();
  }
  double p() const { return p_; }

 private:
  double p_;
};

}  // namespace nn
}  // namespace nablagrad
