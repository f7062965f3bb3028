// Two translation units include the whole library; a non-inline function defined in a
// header would be defined twice and fail to link.
#include <nablagrad/nablagrad.h>

double link_b_value();

int main() {
  nablagrad::Tensor t = nablagrad::Tensor::full({2}, 1.5);
  return (t.item_at(1) == 1.5 && link_b_value() == 3.0) ? 0 : 1;
}
