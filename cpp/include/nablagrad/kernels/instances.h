// nablagrad/kernels/instances.h - the kernel entry points compiled once per program.
//
// The kernels are templates defined in the headers, so every translation unit that calls one
// compiles it, with the micro-kernels of every SIMD level beneath it: about three quarters of
// the machine code of a unit that trains a model. A program of many units can compile them once:
//
//   * compile every unit with NABLAGRAD_EXTERN_KERNELS defined: the headers then declare gemm,
//     the three conv2d passes, the recurrent layer's two passes and attention's two blocks
//     `extern template` for float and double (NABLAGRAD_EXTERN_KERNEL_INSTANCES, gemm.h), so a
//     unit calls them without compiling them;
//   * in exactly one unit, include this header and write NABLAGRAD_INSTANTIATE_KERNELS() at
//     namespace scope: it defines them.
//
// Nothing else changes: the same code, the same results. Without the macro (the default) the
// library stays header-only and every unit compiles what it calls. The C++ tests and the Python
// extension are built this way (CMakeLists.txt), which cuts their build time by a third.
#pragma once

#include "attention.h"
#include "conv2d.h"
#include "gemm.h"
#include "rnn.h"

#define NABLAGRAD_INSTANTIATE_KERNELS()        \
  namespace nablagrad {                         \
  namespace kernels {                           \
  NABLAGRAD_GEMM_INSTANCES(template, float)     \
  NABLAGRAD_GEMM_INSTANCES(template, double)    \
  NABLAGRAD_CONV2D_INSTANCES(template, float)   \
  NABLAGRAD_CONV2D_INSTANCES(template, double)  \
  NABLAGRAD_RNN_INSTANCES(template, float)      \
  NABLAGRAD_RNN_INSTANCES(template, double)     \
  NABLAGRAD_ATTENTION_INSTANCES(template, float) \
  NABLAGRAD_ATTENTION_INSTANCES(template, double) \
  }                                             \
  }
