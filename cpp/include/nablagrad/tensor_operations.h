// nablagrad/tensor_operations.h - the differentiable operations.
//
// Each op checks its arguments at entry (std::invalid_argument for shapes and arguments,
// std::domain_error for dtypes, std::out_of_range for indices and axes), computes its
// result, and - when an input requires grad and grad mode is on - records a node whose
// backward closure sits right below the forward code. The ops are grouped by kind in
// ops/*.h; this header includes them all:
//   ops/elementwise.h  add sub mul div pow, exp log sqrt abs tanh sigmoid relu leaky_relu
//                      gelu clip neg astype, comparisons, where
//   ops/reduction.h    sum mean max min (any axes, keepdims), sum_to
//   ops/linalg.h       matmul (batched, broadcasting) and linear
//   ops/shape.h        reshape transpose permute flatten expand squeeze/unsqueeze slicing
//                      indexing concatenate stack contiguous
//   ops/nn.h           softmax log_softmax layer_norm dropout and the losses
//   ops/attention.h    scaled_dot_product_attention (fused; kernels in kernels/attention.h)
//   ops/conv.h         conv2d max_pool2d avg_pool2d (kernels in kernels/conv2d.h, pool2d.h)
//   ops/inplace.h      in-place add_ sub_ mul_ div_ addcmul_ addcdiv_ lerp_ clamp_ fill_ zero_
//   ops/conv_options.h Conv2dFuncOptions / Pool2dOptions overloads of conv2d and the pools
// tensor_api.h (included last) defines the Tensor members that call these ops, the operators
// and operator<<.
//
//     using namespace nablagrad;
//     Tensor w = Tensor::full({3}, 0.5).requires_grad_();
//     Tensor loss = (w * w).sum();         // or sum(mul(w, w))
//     loss.backward();                     // w.grad() = 2 * w
#pragma once

#include "autograd.h"
#include "ops/attention.h"
#include "ops/conv.h"
#include "ops/elementwise.h"
#include "ops/linalg.h"
#include "ops/nn.h"
#include "ops/reduction.h"
#include "ops/shape.h"
#include "ops/inplace.h"
#include "ops/conv_options.h"
#include "tensor_api.h"  // Tensor members, operators, operator<<
