// Validation of token ids (embedding inputs, cross-entropy targets) shared by the vocab layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/error.hpp"

namespace weft {

// ids must be i32 on the backend's device, at least one token, each in [0, vocab_size). The ids
// are the same on every TP rank, so a failed check throws identically everywhere, before any
// collective. Reads the ids on the host (a device-to-host copy on a GPU).
inline void check_token_ids(Backend& backend, const TensorView& ids, int64_t vocab_size,
                            const std::string& layer, const char* what) {
  WEFT_CHECK(ids.dtype == DType::kI32, layer, ": ", what, " dtype ", dtype_name(ids.dtype),
             " must be i32");
  WEFT_CHECK(ids.shape.rank() >= 1 && ids.numel() > 0, layer, ": ", what, " ", ids.shape.str(),
             " must hold at least one token");
  WEFT_CHECK(ids.device == backend.device(), layer, ": ", what, " is on ", ids.device.str(),
             " but the layer runs on ", backend.device().str());
  // Host ids are read where they are; device ids need one copy to the host.
  std::vector<int32_t> staged;
  const int32_t* host = ids.as<int32_t>();
  if (!ids.device.is_cpu()) {
    staged.resize(static_cast<size_t>(ids.numel()));
    backend.copy(TensorView{staged.data(), ids.shape, DType::kI32, Device::cpu()}, ids);
    host = staged.data();
  }
  for (int64_t t = 0; t < ids.numel(); ++t) {
    WEFT_CHECK(host[t] >= 0 && host[t] < vocab_size, layer, ": ", what, "[", t, "] = ", host[t],
               " is outside the vocabulary [0, ", vocab_size, ")");
  }
}

}  // namespace weft
