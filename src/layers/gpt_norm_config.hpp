// The configuration of a GPT's norms (two per layer and the final one), from the model's.
#pragma once

#include <string>

#include "weft/gpt.hpp"

namespace weft {

// The model's parallel settings whole; every TP rank holds a copy (with sequence parallelism the
// copies' gradients are summed over TP).
inline NormConfig gpt_norm_config(const GPTConfig& c, int tp, const std::string& name) {
  NormConfig n;
  n.parallel() = c.parallel();
  n.hidden = c.hidden;
  n.kind = c.norm;
  n.eps = c.norm_eps;
  n.name = name;
  n.replicas = tp;
  return n;
}

}  // namespace weft
