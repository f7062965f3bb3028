#include <nablagrad/nablagrad.h>

double link_b_value() {
  nablagrad::Tensor t = nablagrad::Tensor::full({2}, 1.5);
  return nablagrad::sum(t).item_at(0);
}
