// The activation check shared by the parallel layers (linear, MLP, attention).
#pragma once

#include "weft/backend.hpp"
#include "weft/error.hpp"

namespace weft {

// input must be [..., features] of `dtype` on the backend's device.
inline void check_activation(const Backend& backend, const TensorView& x, int64_t features,
                             DType dtype, const std::string& layer, const char* what) {
  WEFT_CHECK(x.shape.rank() >= 1 && x.shape.cols() == features, layer, ": ", what, " ",
             x.shape.str(), " must have last dimension ", features);
  WEFT_CHECK(x.dtype == dtype, layer, ": ", what, " dtype ", dtype_name(x.dtype),
             " differs from the layer's dtype ", dtype_name(dtype));
  WEFT_CHECK(x.device == backend.device(), layer, ": ", what, " is on ", x.device.str(),
             " but the layer runs on ", backend.device().str());
}

}  // namespace weft
