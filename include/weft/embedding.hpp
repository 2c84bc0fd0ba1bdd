// VocabParallelEmbedding: the token table split by vocabulary rows across TP ranks, and the LM
// head tied to it.
#pragma once

#include <string>
#include <vector>

#include "weft/mappings.hpp"
#include "weft/parallel_config.hpp"
#include "weft/parameter.hpp"

namespace weft {

// sequence_parallel: the embedding's output and the LM head's input are this rank's rows (dim 0
// split across TP, mappings.hpp): forward reduce-scatters the looked-up rows instead of
// all-reducing them and backward all-gathers the gradient; the head all-gathers its input rows
// before its GEMM and reduce-scatters the input gradient. tp_comm_overlap: the head's
// communication overlaps its GEMMs.
struct VocabParallelEmbeddingConfig : ParallelConfig {
  int64_t vocab_size = 0;  // real vocabulary; the table is padded (see padded_vocab_size)
  int64_t hidden = 0;
  // The padded vocabulary is a multiple of pad_multiple * tp (Megatron's
  // make-vocab-size-divisible-by), so every rank holds an equal, aligned share.
  int64_t pad_multiple = 128;
  std::string name = "embedding";
};

// Padded size for a vocabulary at a TP size: the smallest multiple of pad_multiple * tp that holds
// vocab_size.
int64_t padded_vocab_size(int64_t vocab_size, int64_t pad_multiple, int tp);

class VocabParallelEmbedding {
 public:
  // What a lookup keeps for its backward: the ids (a view: keep them alive).
  struct Saved {
    TensorView ids;
    bool sequence_parallel = false;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };
  // What the LM head keeps: its input (this rank's rows under sequence parallelism; a view).
  struct HeadSaved {
    TensorView hidden;
    bool sequence_parallel = false;
    std::vector<TensorView> views() const;
    int64_t bytes() const { return distinct_bytes(views()); }
  };

  // Logs (info) how much padding was added. Throws when sizes are not positive.
  VocabParallelEmbedding(const ParallelContext& ctx, VocabParallelEmbeddingConfig config);

  // ids i32 [tokens] (global ids, identical on all TP ranks; each must be < vocab_size) ->
  // [tokens, hidden], identical on all TP ranks: each rank looks up the ids in its rows, zeros
  // the rest, and the partial results are all-reduced. Sequence parallel: reduce-scattered
  // instead, this rank's rows [tokens / tp, hidden] (dim 0 of ids split).
  Tensor forward(TensorView ids, Saved& saved);
  Tensor forward(TensorView ids, SequenceParallel mode = SequenceParallel::kAsConfigured);
  // Accumulates the table gradient of the rows this rank holds; grad_output has forward's output
  // shape (this rank's rows when sequence parallel: they are all-gathered first). Consumes `saved`.
  void backward(TensorView grad_output, Saved& saved);

  // Tied LM head: logits for this rank's vocabulary columns,
  // [tokens, hidden] -> [tokens, local_vocab_size()]; column j is vocabulary entry
  // vocab_start() + j. The full logits are never gathered. Sequence parallel: the input is this
  // rank's rows [tokens / tp, hidden], the logits are for all tokens.
  Tensor lm_head_forward(TensorView hidden, HeadSaved& saved);
  Tensor lm_head_forward(TensorView hidden,
                         SequenceParallel mode = SequenceParallel::kAsConfigured);
  // grad_logits [tokens, local_vocab_size()] -> grad of the hidden input (all-reduced across TP,
  // or reduce-scattered to this rank's rows); accumulates into the table gradient as backward().
  Tensor lm_head_backward(TensorView grad_logits, HeadSaved& saved);

  const VocabParallelEmbeddingConfig& config() const { return config_; }
  int64_t padded_vocab() const { return weight_.global_shape[0]; }
  int64_t local_vocab_size() const { return weight_.value.shape()[0]; }
  int64_t vocab_start() const { return local_vocab_size() * weight_.partition_index; }
  Parameter& weight() { return weight_; }
  std::vector<Parameter*> parameters() { return {&weight_}; }

 private:
  Tensor run_forward(TensorView ids, bool sequence_parallel);
  Tensor run_lm_head(TensorView hidden, bool sequence_parallel);

  ParallelContext ctx_;
  VocabParallelEmbeddingConfig config_;
  Parameter weight_;  // [padded_vocab, hidden], split along dim 0
};

// Cross-entropy over vocab-parallel logits without gathering them (Megatron's
// vocab_parallel_cross_entropy): a max all-reduce, a sum-of-exponentials all-reduce and a
// target-logit all-reduce over the TP group.
class VocabParallelCrossEntropy {
 public:
  // What one forward keeps for its backward: the logits and targets (views: keep them alive),
  // and the all-reduced row maximum and sum of exponentials.
  struct Saved {
    TensorView logits, targets;
    int64_t vocab_start = 0, vocab_size = 0;
    Tensor row_max, sum_exp;
    std::vector<TensorView> views() const;
  };

  explicit VocabParallelCrossEntropy(const ParallelContext& ctx) : ctx_(ctx) {}

  // logits [tokens, v_local] (this rank's columns, starting at global entry vocab_start),
  // targets i32 [tokens] (global ids < vocab_size). Entries at or beyond vocab_size are padding
  // and never take part. Returns the per-token loss, identical on all TP ranks.
  std::vector<float> forward(TensorView logits, TensorView targets, int64_t vocab_start,
                             int64_t vocab_size, Saved& saved);
  std::vector<float> forward(TensorView logits, TensorView targets, int64_t vocab_start,
                             int64_t vocab_size);
  // grad_loss: d(objective)/d(loss[t]) per token (e.g. 1/tokens for a mean). Returns the
  // gradient of this rank's logits. Consumes `saved`.
  Tensor backward(const std::vector<float>& grad_loss, Saved& saved);

 private:
  ParallelContext ctx_;
};

}  // namespace weft
