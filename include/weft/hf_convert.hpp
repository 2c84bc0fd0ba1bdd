// Hugging Face models in and out: GPT2LMHeadModel and LlamaForCausalLM directories (config.json,
// model.safetensors, tokenizer files) read as weft GPTs, and weft checkpoints written as them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "weft/gpt.hpp"
#include "weft/grid.hpp"
#include "weft/parameter.hpp"

namespace weft {

class Backend;

// What weft makes of an HF model directory. Supported (anything else is refused, below):
// - "gpt2" (GPT2LMHeadModel): pre-LN LayerNorm with bias, learned positions, multi-head
//   attention scaled by 1/sqrt(head size), activation gelu_new (the tanh GeLU; also
//   gelu_pytorch_tanh), Conv1D weights stored [in, out] and c_attn as [q | k | v]; the LM head
//   tied to wte unless tie_word_embeddings is false (then lm_head.weight).
// - "llama" (LlamaForCausalLM): RMSNorm, rotary positions with rope_theta (HF's rotate_half
//   pairing (i, i + head_dim / 2), which is weft's), SwiGLU (hidden_act silu), grouped-query
//   attention, no biases, an untied lm_head unless tie_word_embeddings.
// Refused with a weft::Error naming the file, the field and the value: another model_type or
// architecture, Llama attention_bias / mlp_bias, rope_scaling, head_dim other than
// hidden / heads, GPT-2 scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn,
// scale_attn_weights false, cross-attention, any other activation, a parallel residual; a
// sharded checkpoint (model.safetensors.index.json); a missing, extra, or misshaped tensor.
struct HfModelInfo {
  std::string kind;  // "gpt2" or "llama"
  GPTConfig config;  // f32, dropout 0, weft's default padding and seed
  std::string dir;
  std::string tokenizer;  // dir/tokenizer.json when present, else ""
};

// True when `dir` holds config.json and model.safetensors (or model.safetensors.index.json, which
// read_hf_model then refuses by name): what the programs' --load takes for an HF model.
bool is_hf_model_dir(const std::string& dir);

// Reads and checks config.json (no tensor data).
HfModelInfo read_hf_config(const std::string& dir);

// An open HF model: its config, and every weft global tensor (the names and layouts of
// gpt_parameter_slices at tp 1) converted from the HF tensors on demand, one at a time. The
// constructor checks every tensor's presence, dtype (F32, BF16, F16) and shape against the
// config, and that no tensor is left over, before anything is converted.
class HfModel {
 public:
  explicit HfModel(const std::string& dir);
  ~HfModel();
  HfModel(HfModel&&) noexcept;
  HfModel& operator=(HfModel&&) noexcept;

  const HfModelInfo& info() const { return info_; }
  // Global tensor `weft_name` (e.g. "layers.0.attention.qkv.weight", grouped layout) as f32,
  // dense, of the shape gpt_parameter_slices gives it at tp 1.
  std::vector<float> global(const std::string& weft_name) const;

 private:
  struct Files;
  HfModelInfo info_;
  std::unique_ptr<Files> files_;
};

// Loads an HF model's weights into `params` (this rank's shards of a GPTModel or PipelineModel
// built from read_hf_config(dir).config at the grid's layout, any tp x pp x dp): each rank reads
// the HF file itself, one global tensor in memory at a time. Vocabulary padding rows are left as
// they are (they never reach a result). No communication.
void load_hf_model(const std::string& dir, const std::vector<Parameter*>& params,
                   const ParallelGrid& grid, Backend& backend);

// Writes HF model `hf_dir` as a weft checkpoint at (tp, pp) in `out` (which must not exist): step
// 0, no optimizer state, the tokenizer.json copied when present. Written into a temporary
// directory beside `out` and renamed; memory: about one tensor. No MPI.
void import_hf_checkpoint(const std::string& hf_dir, const std::string& out, int tp = 1,
                          int pp = 1);

// Writes weft checkpoint `src` (a directory or a root) as an HF model directory `out` (which must
// not exist): config.json, model.safetensors (F32), and tokenizer.json when the checkpoint has
// one. The config must be one HF names: gpt2 (LayerNorm, GeLU, learned positions, biases,
// kv_heads == heads) or llama (RMSNorm, SwiGLU, rotary, no biases); otherwise weft::Error naming
// the field that has no HF counterpart. Written into a temporary directory beside `out` and
// renamed; memory: about one tensor. No MPI.
void export_hf_checkpoint(const std::string& src, const std::string& out);

}  // namespace weft
