// The table of transformer-op cases (norms, attention and its KV-cache path, rotary, embedding,
// the vocab-parallel cross-entropy pieces, SwiGLU, dropout, AdamW, scale, sum of squares) and of
// the copy/cast ops (copy, copy_columns, convert, fill), run on every backend against a
// double-precision or exactly rounded host reference.
#pragma once

#include <string>
#include <vector>

#include "common/backend_op_test.hpp"
#include "weft/backend.hpp"

namespace weft::testing {

enum class TransformerOp {
  kScale,
  kSumSquares,
  kLayerNorm,
  kRmsNorm,
  kAttention,
  kAttentionCache,
  kRope,
  kEmbedding,
  kEmbeddingBackward,
  kVocabCrossEntropy,
  kSwiglu,
  kDropout,
  kAdamW,
  kCopy,
  kCopyColumns,
  kConvert,
  kFill,
};

// The vocabulary split as the vocab-parallel layers split it: `shards` shards of `shard` columns,
// the real vocabulary [0, vocab) and padding after it.
struct VocabLayout {
  int64_t tokens = 0, shard = 0, shards = 0, vocab = 0;
  bool large_padding = false;       // padding logits far above the real ones (40 + column)
  bool targets_in_padding = false;  // targets drawn over the padded width: pieces only, no loss
};

// A window of columns copied between two matrices of `rows` rows.
struct ColumnWindow {
  int64_t rows = 0, src_cols = 0, dst_cols = 0, src_col = 0, dst_col = 0, width = 0;
};

// One case; each op reads the fields its comment names.
struct TransformerCase {
  TransformerOp op = TransformerOp::kScale;
  DType dtype = DType::kF32;  // the data (AdamW: the gradient; convert: the source)
  DType to = DType::kF32;     // convert: the destination
  Shape shape;                // elementwise ops, norms, copy, convert, fill; embedding: the table
  AttentionShape attn;        // attention, KV cache, rope
  std::vector<int64_t> feed;  // KV cache: the positions of each call, prefill first
  int64_t offset = 0;         // rope: first position; embedding: vocab_start; dropout: counter
  std::vector<int32_t> ids;   // embedding: the token ids, some outside this shard's rows
  VocabLayout vocab;          // vocab cross-entropy
  ColumnWindow window;        // copy_columns
  AdamWStep adamw;            // AdamW: the first step's settings
  int64_t adamw_steps = 1;    // AdamW: steps taken, adamw.step counting up
  float value = 0.0f;         // scale: the factor; dropout: the probability; fill: the value
  std::string label;          // tells apart the cases of one op and dtype in the test name
};

std::vector<TransformerCase> transformer_cases();
std::string transformer_case_name(const TransformerCase& c);
void PrintTo(const TransformerCase& c, std::ostream* os);

class TransformerOpTest : public BackendOpTest<TransformerCase> {};

}  // namespace weft::testing

// Runs the table on the backend `spec` ("cpu", "cuda"), the tests named
// <prefix>/TransformerOpTest.*.
#define WEFT_INSTANTIATE_TRANSFORMER_CASES(prefix, spec)                                         \
  WEFT_INSTANTIATE_OP_CASES(prefix, TransformerOpTest, spec, ::weft::testing::transformer_cases, \
                            ::weft::testing::transformer_case_name)
