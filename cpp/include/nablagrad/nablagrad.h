// nablagrad/nablagrad.h - umbrella header: the whole C++ API.
//
// nablagrad is a header-only C++17 tensor library with reverse-mode autograd:
//   tensor.h             dtypes, aligned storage, strided views
//   autograd.h           graph nodes, backward(), NoGradGuard
//   tensor_operations.h  the differentiable ops (forward and backward side by side)
//   tensor_api.h         Tensor methods (backward, grad, item, sum, ...), operators, operator<<
//   threading.h          the persistent thread pool (set_num_threads / parallel_for)
//   layer.h, layers/     nn::Layer and the layers (Linear, Conv2D, ...), nn::init (docs/layers.md)
//   optim.h              optimizers (SGD, Adam, AdamW, RMSprop); optim/functional.h fused steps
//   random.h             the seeded generator behind rand/randn/dropout
//   serialize.h          safetensors files: save/load tensors, load_state_dict into layers
//   kernels/             raw compute kernels (GEMM, convolution, pooling) on pointers
//
//     #include <nablagrad/nablagrad.h>
//     using namespace nablagrad;
//     Tensor x = randn({4, 3});
//     Tensor w = randn({3, 2}).requires_grad_();
//     Tensor loss = (x.matmul(w).relu() * 2.0).mean();
//     loss.backward();              // w.grad() holds dloss/dw
//     std::cout << loss.item<float>() << " " << w.grad() << "\n";
//
// Compile with: g++ -std=c++17 -O3 -pthread -I<path>/cpp/include your.cpp
#pragma once

#include "autograd.h"
#include "tensor.h"
#include "tensor_operations.h"
#include "tensor_api.h"
#include "random.h"
#include "threading.h"
#include "layer.h"
#include "layers/activation.h"
#include "layers/attention.h"
#include "layers/container.h"
#include "layers/conv.h"
#include "layers/dropout.h"
#include "layers/embedding.h"
#include "layers/init.h"
#include "layers/linear.h"
#include "layers/normalization.h"
#include "layers/pooling.h"
#include "layers/rnn.h"
#include "optim.h"
#include "serialize.h"
