// The GEMM of the CUDA backend on cuBLASLt: row-major operands mapped onto column-major cuBLASLt,
// epilogues fused where cuBLASLt supports them, kernels from kernels/ where it does not.
//
// Mapping. Our matrices are row-major; a row-major r x c matrix is the column-major c x r matrix
// with the same leading dimension. So our C = op(A) op(B) (m x n) is computed as the
// column-major C^T = op(B)^T op(A)^T (n x m): cuBLASLt's A is our B, its B is our A, each with our
// transpose flag, and cuBLASLt's M, N, K are our n, m, k.
//
// Epilogues (cuBLASLt computes D = epi(alpha op(A) op(B) + beta C + bias), bias per row of D):
//   kBias     -> BIAS: cuBLASLt's rows are our columns, so its per-row bias of length M = n is our
//                bias broadcast over rows.
//   kGelu     -> GELU, or GELU_AUX when gelu_input is given: the aux matrix is our m x n
//   gelu_input,
//                column-major n x m with leading dimension n.
//   kBiasGelu -> GELU_BIAS, or GELU_AUX_BIAS with gelu_input.
//   kBiasGrad -> BGRADB: cuBLASLt's B is our A, and its reduction of op(B) over K (length N = m)
//                is our sum of op(A) over k.
// Fallback (run_unfused): a plain GEMM, then add_bias / copy / gelu kernels, or the sum_rows /
// sum_columns kernels for the bias gradient. It is taken when
//   - the GELU aux leading dimension n is not a multiple of 8 (cuBLASLt requires it),
//   - the bias, bias_grad or aux pointer is not 16-byte aligned (we do not trust every kernel to
//     handle less; fresh device allocations are 256-byte aligned),
//   - kBiasGrad with alpha != 1 (whether BGRADB scales the bias gradient by alpha is not
//     documented; our contract is the unscaled sum),
//   - cuBLASLt's heuristic returns no algorithm for the fused epilogue, with any status (BGRADB is
//     not offered for every transpose/dtype combination), or cublasLtMatmul answers NOT_SUPPORTED
//     for it.
#include "backend/cuda/cublaslt_matmul.hpp"

#include <cstring>
#include <string>

#include "backend/cuda_check.hpp"
#include "kernels.hpp"
#include "weft/log.hpp"

namespace weft {

namespace {

constexpr uint32_t kMaxAlignment = 256;  // cuBLASLt's default assumption for A, B, C, D
constexpr uint32_t kEpilogueAlignment = 16;
constexpr int64_t kAuxLdMultiple = 8;  // CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD must divide by 8

// Largest power of two (at most 256) that divides the address; 256 for null (unused) pointers.
uint32_t alignment_of(const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  if (address == 0) return kMaxAlignment;
  const uintptr_t lowest_bit = address & (~address + 1);
  return lowest_bit >= kMaxAlignment ? kMaxAlignment : static_cast<uint32_t>(lowest_bit);
}

cudaDataType_t cuda_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kI32:
      break;
  }
  WEFT_ASSERT(false, "unknown dtype ", static_cast<int>(dtype));
}

const char* epilogue_name(Epilogue epilogue) {
  switch (epilogue) {
    case Epilogue::kNone:
      return "none";
    case Epilogue::kBias:
      return "bias";
    case Epilogue::kGelu:
      return "gelu";
    case Epilogue::kBiasGelu:
      return "bias_gelu";
    case Epilogue::kBiasGrad:
      return "bias_grad";
  }
  return "?";
}

std::string describe(const CublasLtMatmul::Key& key) {
  return detail::concat("m=", key.m, " n=", key.n, " k=", key.k, " transpose_a=", key.transpose_a,
                        " transpose_b=", key.transpose_b, " ", dtype_name(key.ab_dtype), "->",
                        dtype_name(key.c_dtype), " epilogue=", epilogue_name(key.epilogue),
                        key.gelu_aux ? "+aux" : "", key.allow_tf32 ? " tf32" : "",
                        " alignments a/b/c=", key.align_a, "/", key.align_b, "/", key.align_c);
}

bool has_bias(Epilogue e) { return e == Epilogue::kBias || e == Epilogue::kBiasGelu; }
bool has_gelu(Epilogue e) { return e == Epilogue::kGelu || e == Epilogue::kBiasGelu; }

// The fused cuBLASLt epilogue for `key`, or false when we already know it must run unfused.
bool fused_epilogue(const CublasLtMatmul::Key& key, cublasLtEpilogue_t* out) {
  const bool aux_ok =
      !key.gelu_aux || (key.n % kAuxLdMultiple == 0 && key.align_aux >= kEpilogueAlignment);
  const bool bias_ok = key.align_bias >= kEpilogueAlignment;
  switch (key.epilogue) {
    case Epilogue::kNone:
      *out = CUBLASLT_EPILOGUE_DEFAULT;
      return true;
    case Epilogue::kBias:
      *out = CUBLASLT_EPILOGUE_BIAS;
      return bias_ok;
    case Epilogue::kGelu:
      *out = key.gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU;
      return aux_ok;
    case Epilogue::kBiasGelu:
      *out = key.gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
      return aux_ok && bias_ok;
    case Epilogue::kBiasGrad:
      *out = CUBLASLT_EPILOGUE_BGRADB;
      return bias_ok && key.unit_alpha;
  }
  return false;
}

// RAII owners of the three cuBLASLt descriptor kinds; destructors log, never throw.
class MatmulDesc {
 public:
  MatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
    WEFT_CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc_, compute, scale));
  }
  ~MatmulDesc() {
    const cublasStatus_t status = cublasLtMatmulDescDestroy(desc_);
    if (status != CUBLAS_STATUS_SUCCESS) {
      WEFT_LOG(kError, "cublasLtMatmulDescDestroy: ", cublasLtGetStatusString(status));
    }
  }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;

  template <typename T>
  void set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
    WEFT_CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc_, attribute, &value, sizeof(value)),
                      "matmul descriptor attribute ", static_cast<int>(attribute));
  }
  cublasLtMatmulDesc_t get() const { return desc_; }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
};

class MatrixLayout {
 public:
  MatrixLayout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    WEFT_CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&layout_, type, static_cast<uint64_t>(rows),
                                                 static_cast<uint64_t>(cols), ld),
                      "matrix layout ", rows, " x ", cols, " ld ", ld);
  }
  ~MatrixLayout() {
    const cublasStatus_t status = cublasLtMatrixLayoutDestroy(layout_);
    if (status != CUBLAS_STATUS_SUCCESS) {
      WEFT_LOG(kError, "cublasLtMatrixLayoutDestroy: ", cublasLtGetStatusString(status));
    }
  }
  MatrixLayout(const MatrixLayout&) = delete;
  MatrixLayout& operator=(const MatrixLayout&) = delete;
  cublasLtMatrixLayout_t get() const { return layout_; }

 private:
  cublasLtMatrixLayout_t layout_ = nullptr;
};

class MatmulPreference {
 public:
  MatmulPreference() { WEFT_CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref_)); }
  ~MatmulPreference() {
    const cublasStatus_t status = cublasLtMatmulPreferenceDestroy(pref_);
    if (status != CUBLAS_STATUS_SUCCESS) {
      WEFT_LOG(kError, "cublasLtMatmulPreferenceDestroy: ", cublasLtGetStatusString(status));
    }
  }
  MatmulPreference(const MatmulPreference&) = delete;
  MatmulPreference& operator=(const MatmulPreference&) = delete;

  template <typename T>
  void set(cublasLtMatmulPreferenceAttributes_t attribute, const T& value) {
    WEFT_CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref_, attribute, &value, sizeof(value)),
                      "matmul preference attribute ", static_cast<int>(attribute));
  }
  cublasLtMatmulPreference_t get() const { return pref_; }

 private:
  cublasLtMatmulPreference_t pref_ = nullptr;
};

template <typename T>
void hash_combine(size_t* seed, const T& value) {
  *seed ^= std::hash<T>()(value) + 0x9e3779b97f4a7c15ull + (*seed << 6) + (*seed >> 2);
}

}  // namespace

HeuristicOutcome heuristic_outcome(cublasStatus_t status, int count, cublasStatus_t state,
                                   bool fused_epilogue) {
  if (status == CUBLAS_STATUS_SUCCESS && count > 0 && state == CUBLAS_STATUS_SUCCESS) {
    return HeuristicOutcome::kUseAlgorithm;
  }
  return fused_epilogue ? HeuristicOutcome::kRunUnfused : HeuristicOutcome::kFail;
}

// Descriptors and the chosen algorithm for one Key. `fused` false: cuBLASLt cannot run this
// epilogue here; run_unfused does the work.
struct CublasLtMatmul::Plan {
  std::unique_ptr<MatmulDesc> desc;
  std::unique_ptr<MatrixLayout> a, b, c;  // cuBLASLt's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  bool fused = false;
};

bool CublasLtMatmul::Key::operator==(const Key& o) const {
  return m == o.m && n == o.n && k == o.k && transpose_a == o.transpose_a &&
         transpose_b == o.transpose_b && ab_dtype == o.ab_dtype && c_dtype == o.c_dtype &&
         epilogue == o.epilogue && gelu_aux == o.gelu_aux && unit_alpha == o.unit_alpha &&
         allow_tf32 == o.allow_tf32 && align_a == o.align_a && align_b == o.align_b &&
         align_c == o.align_c && align_bias == o.align_bias && align_aux == o.align_aux &&
         workspace_bytes == o.workspace_bytes;
}

size_t CublasLtMatmul::KeyHash::operator()(const Key& key) const {
  size_t seed = 0;
  hash_combine(&seed, key.m);
  hash_combine(&seed, key.n);
  hash_combine(&seed, key.k);
  const unsigned flags = (key.transpose_a ? 1u : 0u) | (key.transpose_b ? 2u : 0u) |
                         (key.gelu_aux ? 4u : 0u) | (key.unit_alpha ? 8u : 0u) |
                         (key.allow_tf32 ? 16u : 0u);
  hash_combine(&seed, flags);
  hash_combine(&seed, static_cast<int>(key.ab_dtype));
  hash_combine(&seed, static_cast<int>(key.c_dtype));
  hash_combine(&seed, static_cast<int>(key.epilogue));
  hash_combine(&seed, key.align_a);
  hash_combine(&seed, key.align_b);
  hash_combine(&seed, key.align_c);
  hash_combine(&seed, key.align_bias);
  hash_combine(&seed, key.align_aux);
  hash_combine(&seed, key.workspace_bytes);
  return seed;
}

CublasLtMatmul::CublasLtMatmul(int device) : device_(device) {
  WEFT_CHECK_CUBLAS(cublasLtCreate(&handle_), "creating the cuBLASLt handle on cuda:", device);
}

CublasLtMatmul::~CublasLtMatmul() {
  plans_.clear();  // descriptors before the handle
  const cublasStatus_t status = cublasLtDestroy(handle_);
  if (status != CUBLAS_STATUS_SUCCESS) {
    WEFT_LOG(kError, "cublasLtDestroy on cuda:", device_, ": ", cublasLtGetStatusString(status));
  }
}

CublasLtMatmul::Plan& CublasLtMatmul::plan_for(const Key& key, const GemmArgs& args) {
  auto found = plans_.find(key);
  if (found != plans_.end()) return *found->second;

  auto plan = std::make_unique<Plan>();
  const cublasComputeType_t compute = key.ab_dtype == DType::kF32 && key.allow_tf32
                                          ? CUBLAS_COMPUTE_32F_FAST_TF32
                                          : CUBLAS_COMPUTE_32F;
  // alpha and beta are host floats for every dtype: the scale type of COMPUTE_32F is f32.
  plan->desc = std::make_unique<MatmulDesc>(compute, CUDA_R_32F);
  const cublasOperation_t trans_a = key.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t trans_b = key.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  plan->desc->set(CUBLASLT_MATMUL_DESC_TRANSA, trans_a);
  plan->desc->set(CUBLASLT_MATMUL_DESC_TRANSB, trans_b);

  // Stored shapes (column-major view of our row-major buffers): our B is k x n (n x k when
  // transposed) row-major, i.e. n x k (k x n) column-major; likewise our A.
  const cudaDataType_t ab_type = cuda_dtype(key.ab_dtype);
  const cudaDataType_t c_type = cuda_dtype(key.c_dtype);
  const int64_t ldb = key.transpose_b ? key.k : key.n;
  const int64_t lda = key.transpose_a ? key.m : key.k;
  plan->a = key.transpose_b ? std::make_unique<MatrixLayout>(ab_type, key.k, key.n, ldb)
                            : std::make_unique<MatrixLayout>(ab_type, key.n, key.k, ldb);
  plan->b = key.transpose_a ? std::make_unique<MatrixLayout>(ab_type, key.m, key.k, lda)
                            : std::make_unique<MatrixLayout>(ab_type, key.k, key.m, lda);
  plan->c = std::make_unique<MatrixLayout>(c_type, key.n, key.m, key.n);

  plan->fused = fused_epilogue(key, &plan->epilogue);
  if (!plan->fused) {
    WEFT_LOG(kDebug, "gemm: unfused epilogue for ", describe(key));
    return *plans_.emplace(key, std::move(plan)).first->second;
  }
  plan->desc->set(CUBLASLT_MATMUL_DESC_EPILOGUE, plan->epilogue);
  // The heuristic reads these pointers for their alignment, so set the real ones before asking;
  // run_fused sets them again for every call.
  if (has_bias(key.epilogue)) plan->desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, args.bias.data);
  if (key.epilogue == Epilogue::kBiasGrad) {
    plan->desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, args.bias_grad.data);
  }
  if (key.gelu_aux) {
    plan->desc->set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, args.gelu_input.data);
    const int64_t aux_ld = key.n;
    plan->desc->set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld);
  }

  // The heuristic assumes 256-byte aligned operands unless told otherwise; views that start at a
  // row offset are less aligned, and a kernel chosen for 256 would fault on them.
  MatmulPreference pref;
  const uint64_t workspace_limit = key.workspace_bytes;
  pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace_limit);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
  pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);

  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan->desc->get(), plan->a->get(), plan->b->get(), plan->c->get(), plan->c->get(),
      pref.get(), 1, &result, &count);
  switch (heuristic_outcome(status, count, result.state, key.epilogue != Epilogue::kNone)) {
    case HeuristicOutcome::kUseAlgorithm:
      plan->algo = result.algo;
      break;
    case HeuristicOutcome::kRunUnfused:
      // NOT_SUPPORTED is the usual answer; any other failure for the fused epilogue (an invalid
      // value for this epilogue in some cuBLASLt version, say) still leaves the plain GEMM.
      if (status == CUBLAS_STATUS_SUCCESS || status == CUBLAS_STATUS_NOT_SUPPORTED) {
        WEFT_LOG(kDebug, "gemm: cuBLASLt offers no fused algorithm for ", describe(key),
                 "; running the epilogue unfused");
      } else {
        WEFT_LOG(kWarning, "gemm: cuBLASLt's heuristic failed for the fused epilogue of ",
                 describe(key), " (", cublasLtGetStatusString(status),
                 "); running the epilogue unfused");
      }
      plan->fused = false;
      break;
    case HeuristicOutcome::kFail:
      WEFT_THROW(ErrorCode::kCublas, "cuBLASLt has no algorithm for ", describe(key), " (",
                 cublasLtGetStatusString(status != CUBLAS_STATUS_SUCCESS ? status : result.state),
                 count == 0 ? ", no result" : "", ")");
  }
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void CublasLtMatmul::run(const GemmArgs& args, const GemmDims& dims, cudaStream_t stream,
                         void* workspace, size_t workspace_bytes) {
  WEFT_ASSERT(dims.m > 0 && dims.n > 0 && dims.k > 0, "gemm: empty problem m=", dims.m,
              " n=", dims.n, " k=", dims.k, " reached cuBLASLt");

  Key key{};
  key.m = dims.m;
  key.n = dims.n;
  key.k = dims.k;
  key.transpose_a = args.transpose_a;
  key.transpose_b = args.transpose_b;
  key.ab_dtype = args.a.dtype;
  key.c_dtype = args.c.dtype;
  key.epilogue = args.epilogue;
  key.gelu_aux = has_gelu(args.epilogue) && args.gelu_input.data != nullptr;
  key.unit_alpha = args.epilogue != Epilogue::kBiasGrad || args.alpha == 1.0f;
  key.allow_tf32 = args.allow_tf32 && args.a.dtype == DType::kF32;
  key.align_a = alignment_of(args.a.data);
  key.align_b = alignment_of(args.b.data);
  key.align_c = alignment_of(args.c.data);
  key.align_bias = has_bias(args.epilogue)                ? alignment_of(args.bias.data)
                   : args.epilogue == Epilogue::kBiasGrad ? alignment_of(args.bias_grad.data)
                                                          : 0;
  key.align_aux = key.gelu_aux ? alignment_of(args.gelu_input.data) : 0;
  key.workspace_bytes = workspace_bytes;

  Plan& plan = plan_for(key, args);
  if (!plan.fused) {
    run_unfused(key, args, dims, stream, workspace, workspace_bytes);
    return;
  }
  const cublasStatus_t status = run_fused(plan, args, stream, workspace, workspace_bytes);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED && plan.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    // Nothing was launched; remember and take the unfused path from now on.
    WEFT_LOG(kDebug, "gemm: cublasLtMatmul refused the fused epilogue for ", describe(key),
             "; running it unfused");
    plan.fused = false;
    run_unfused(key, args, dims, stream, workspace, workspace_bytes);
    return;
  }
  WEFT_CHECK_CUBLAS(status, "cublasLtMatmul for ", describe(key));
}

cublasStatus_t CublasLtMatmul::run_fused(Plan& plan, const GemmArgs& args, cudaStream_t stream,
                                         void* workspace, size_t workspace_bytes) {
  if (plan.epilogue == CUBLASLT_EPILOGUE_BIAS || plan.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
      plan.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
    plan.desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, args.bias.data);
  } else if (plan.epilogue == CUBLASLT_EPILOGUE_BGRADB) {
    plan.desc->set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, args.bias_grad.data);
  }
  if (plan.epilogue == CUBLASLT_EPILOGUE_GELU_AUX ||
      plan.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
    plan.desc->set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, args.gelu_input.data);
  }
  const float alpha = args.alpha;
  const float beta = args.beta;
  return cublasLtMatmul(handle_, plan.desc->get(), &alpha, args.b.data, plan.a->get(), args.a.data,
                        plan.b->get(), &beta, args.c.data, plan.c->get(), args.c.data,
                        plan.c->get(), &plan.algo, workspace, workspace_bytes, stream);
}

void CublasLtMatmul::run_unfused(const Key& key, const GemmArgs& args, const GemmDims& dims,
                                 cudaStream_t stream, void* workspace, size_t workspace_bytes) {
  const TensorView& c = args.c;
  Key plain = key;
  plain.epilogue = Epilogue::kNone;
  plain.gelu_aux = false;
  plain.unit_alpha = true;
  plain.align_bias = 0;
  plain.align_aux = 0;
  Plan& plan = plan_for(plain, args);
  WEFT_CHECK_CUBLAS(run_fused(plan, args, stream, workspace, workspace_bytes),
                    "cublasLtMatmul for ", describe(plain));
  dispatch_storage(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* out = c.as<T>();
    if (has_bias(args.epilogue)) {
      launch_add_bias<T>(out, out, args.bias.as<T>(), dims.m, dims.n, stream);
    }
    if (has_gelu(args.epilogue)) {
      if (args.gelu_input.data != nullptr) {
        WEFT_CHECK_CUDA(cudaMemcpyAsync(args.gelu_input.data, c.data, c.bytes(),
                                        cudaMemcpyDeviceToDevice, stream),
                        "gemm: saving the GeLU input");
      }
      launch_gelu<T>(out, out, c.numel(), stream);
    }
  });
  if (args.epilogue == Epilogue::kBiasGrad) {
    // bias_grad[i] = sum over k of op(A)[i, k]: row sums of A (m x k), or column sums of the
    // stored k x m matrix when A is transposed.
    dispatch_storage(c.dtype, [&](auto out_tag) {
      using Out = typename decltype(out_tag)::type;
      dispatch_storage(args.a.dtype, [&](auto in_tag) {
        using In = typename decltype(in_tag)::type;
        if (args.transpose_a) {
          launch_sum_columns<Out, In>(args.bias_grad.as<Out>(), args.a.as<In>(), dims.k, dims.m,
                                      stream);
        } else {
          launch_sum_rows<Out, In>(args.bias_grad.as<Out>(), args.a.as<In>(), dims.m, dims.k,
                                   stream);
        }
      });
    });
  }
}

}  // namespace weft
