// nablagrad/layers/check.h - argument checks shared by the layers' constructors.
#pragma once

#include <stdexcept>
#include <string>

#include "../tensor.h"

namespace nablagrad {
namespace nn {
namespace detail {

/// The dtype a layer creates its parameters in must be float32 or float64;
/// std::domain_error "<layer>: dtype must be float32 or float64, got <dtype>" otherwise.
inline void check_parameter_dtype(DType dtype, const char* layer) {
  if (!is_floating(dtype))
    throw std::domain_error(std::string(layer) + ": dtype must be float32 or float64, got " + dtype_name(dtype));
}

}  // namespace detail
}  // namespace nn
}  // namespace nablagrad
