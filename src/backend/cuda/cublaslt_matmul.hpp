// CublasLtMatmul: weft's row-major GEMM with epilogues (GemmArgs in backend.hpp) on cuBLASLt, with
// descriptors and heuristic choices cached per problem.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>

#include "backend/gemm_dims.hpp"
#include "weft/backend.hpp"

namespace weft {

// What a plan does with cuBLASLt's heuristic answer (`status` of cublasLtMatmulAlgoGetHeuristic,
// the number of results, the first result's state): run the algorithm it found; run the epilogue
// unfused (a plain GEMM, then kernels) when there is none for a fused epilogue, whatever the
// reason; or fail, when even the plain GEMM (`fused_epilogue` false) has none.
enum class HeuristicOutcome { kUseAlgorithm, kRunUnfused, kFail };
HeuristicOutcome heuristic_outcome(cublasStatus_t status, int count, cublasStatus_t state,
                                   bool fused_epilogue);

class CublasLtMatmul {
 public:
  // Creates the cuBLASLt handle on `device`, which must be current.
  explicit CublasLtMatmul(int device);
  ~CublasLtMatmul();
  CublasLtMatmul(const CublasLtMatmul&) = delete;
  CublasLtMatmul& operator=(const CublasLtMatmul&) = delete;

  // Queues args (checked by Backend::gemm, its dimensions in `dims`) on `stream`. The workspace
  // must not be used by work on any other stream meanwhile; the device must be current.
  void run(const GemmArgs& args, const GemmDims& dims, cudaStream_t stream, void* workspace,
           size_t workspace_bytes);

  // Everything that decides the descriptors and the algorithm cuBLASLt picks. Alignments are
  // part of it because the heuristic assumes them (see plan_for).
  struct Key {
    int64_t m, n, k;
    bool transpose_a, transpose_b;
    DType ab_dtype, c_dtype;
    Epilogue epilogue;
    bool gelu_aux;    // kGelu / kBiasGelu also write gelu_input
    bool unit_alpha;  // alpha == 1 (only kBiasGrad depends on it, see epilogue_for)
    bool allow_tf32;
    uint32_t align_a, align_b, align_c, align_bias, align_aux;  // bytes, powers of two <= 256
    size_t workspace_bytes;
    bool operator==(const Key& o) const;
  };
  struct KeyHash {
    size_t operator()(const Key& key) const;
  };

 private:
  struct Plan;

  Plan& plan_for(const Key& key, const GemmArgs& args);
  // Returns cuBLASLt's status so that the caller can fall back on NOT_SUPPORTED.
  cublasStatus_t run_fused(Plan& plan, const GemmArgs& args, cudaStream_t stream, void* workspace,
                           size_t workspace_bytes);
  void run_unfused(const Key& key, const GemmArgs& args, const GemmDims& dims, cudaStream_t stream,
                   void* workspace, size_t workspace_bytes);

  int device_;
  cublasLtHandle_t handle_ = nullptr;
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans_;
};

}  // namespace weft
