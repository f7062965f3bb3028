// nablagrad/nablagrad.h - umbrella header: the whole C++ API.
//
// nablagrad is a header-only C++17 tensor library with reverse-mode autograd:
//   tensor.h             dtypes, aligned storage, strided views
//   autograd.h           graph nodes, backward(), NoGradGuard
//   tensor_operations.h  the differentiable ops (forward and backward side by side)
//   threading.h          the persistent thread pool (set_num_threads / parallel_for)
//   random.h             the seeded generator behind rand/randn/dropout
//   kernels/             raw compute kernels (GEMM, convolution, pooling) on pointers
//
//     #include <nablagrad/nablagrad.h>
//     using namespace nablagrad;
//     Tensor x = randn({4, 3});
//     Tensor w = randn({3, 2}); w.impl().requires_grad = true;
//     Tensor loss = mean(relu(matmul(x, w)));
//     backward(loss);               // Tensor(w.impl().grad) holds dloss/dw
//
// Compile with: g++ -std=c++17 -O3 -pthread -I<path>/cpp/include your.cpp
#pragma once

#include "autograd.h"
#include "tensor.h"
#include "tensor_operations.h"
#include "random.h"
#include "threading.h"
