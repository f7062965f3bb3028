// nablagrad/layers/embedding.h - the Embedding layer: a lookup table of learned vectors.
//
//     nn::Embedding emb(1000, 64);              // weight (1000, 64) ~ N(0, 1)
//     Tensor y = emb.forward(tokens);           // int64 tokens of any shape S -> S + (64,)
//
// The gradient of the weight is scattered back to the looked-up rows (repeated indices
// accumulate), through the differentiable indexing op.
#pragma once

#include <stdexcept>
#include <string>

#include "../layer.h"
#include "../tensor_operations.h"
#include "check.h"
#include "init.h"

namespace nablagrad {
namespace nn {

struct EmbeddingOptions {
  EmbeddingOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}
  NABLAGRAD_ARG(int64_t, num_embeddings);
  NABLAGRAD_ARG(int64_t, embedding_dim);
  NABLAGRAD_ARG(DType, dtype) = DType::Float32;
};

class Embedding : public Layer {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim)
      : Embedding(EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit Embedding(const EmbeddingOptions& options) : options_(options) {
    if (options.num_embeddings() <= 0 || options.embedding_dim() <= 0)
      throw std::invalid_argument("Embedding: num_embeddings and embedding_dim must be positive, got " +
                                  std::to_string(options.num_embeddings()) + " and " +
                                  std::to_string(options.embedding_dim()));
    detail::check_parameter_dtype(options.dtype(), "Embedding");
    weight = register_parameter("weight",
                                Tensor::empty({options.num_embeddings(), options.embedding_dim()}, options.dtype()));
    reset_parameters();
  }

  /// PyTorch's default initialisation: N(0, 1) from the seeded generator.
  void reset_parameters() { init::normal_(weight); }

  Tensor forward(const Tensor& indices) override {
    if (indices.dtype() != DType::Int64)
      throw std::domain_error(std::string("Embedding: indices must be int64, got ") + dtype_name(indices.dtype()) +
                              " (shape " + shape_str(indices.shape()) + ")");
    const int64_t n = options_.num_embeddings();
    const Tensor ic = indices.contiguous_data();
    const int64_t* p = ic.data<int64_t>();
    for (int64_t i = 0, m = ic.numel(); i < m; ++i)
      if (p[i] < 0 || p[i] >= n)
        throw std::out_of_range("Embedding: index " + std::to_string(p[i]) + " is out of range for num_embeddings=" +
                                std::to_string(n) + " (indices shape " + shape_str(indices.shape()) + ")");
    return index(weight, {TensorIndex::array(ic)});
  }

  std::string name() const override { return "Embedding"; }
  std::string extra_repr() const override {
    return std::to_string(options_.num_embeddings()) + ", " + std::to_string(options_.embedding_dim());
  }
  const EmbeddingOptions& options() const { return options_; }

  Tensor weight;  // (num_embeddings, embedding_dim)

 private:
  EmbeddingOptions options_;
};

}  // namespace nn
}  // namespace nablagrad
