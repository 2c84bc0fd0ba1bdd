// OneDnn: oneDNN matmul with the GemmArgs epilogues, and GeLU. Bias, sum (beta) and GeLU run as
// fused post-ops; when the GeLU input must be kept for backward, the matmul writes it and an
// eltwise primitive reads it back; the bias gradient is one extra pass over A. A 16-bit matmul
// that oneDNN cannot run natively on this CPU (f16 without AVX512-FP16; bf16 on AVX2-only parts
// such as some AMD EPYC VMs) is computed in f32 and rounded back. The fused kernels' f32 tile
// products call oneDNN's sgemm; their 16-bit ones have their own primitive cache behind a lock,
// since those kernels call from every OpenMP thread.
#include "backend/cpu/onednn.hpp"

#include <cstring>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend/backend_checks.hpp"
#include "backend/dtype_dispatch.hpp"
#include "backend/pointwise_math.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

dnnl::memory::data_type to_dnnl(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return dnnl::memory::data_type::f32;
    case DType::kBF16:
      return dnnl::memory::data_type::bf16;
    case DType::kF16:
      return dnnl::memory::data_type::f16;
    case DType::kI32:
      return dnnl::memory::data_type::s32;
  }
  WEFT_THROW(ErrorCode::kInternal, "unknown dtype");
}

// Everything that changes the primitive; alpha and beta are baked into its attributes.
using MatmulKey = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int, bool, bool, float,
                             float>;  // m n k ta tb in_dt out_dt bias gelu alpha beta

// m n k ta tb alpha beta dtype lda ldb ldc (leading dimensions resolved: never 0)
using TileKey =
    std::tuple<int64_t, int64_t, int64_t, bool, bool, float, float, int, int64_t, int64_t, int64_t>;

// A tile product's primitive and its operands' descriptors. The scratchpad is the caller's
// (user mode), so that threads running the same primitive never share one.
struct TilePrimitive {
  dnnl::matmul matmul;
  dnnl::memory::desc a, b, c, scratchpad;
};

template <typename T>
std::vector<float> widen(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.numel()));
  const T* p = v.as<T>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = to_float(p[i]);
  return out;
}

TensorView f32_view(std::vector<float>& data, const Shape& shape) {
  return TensorView{data.data(), shape, DType::kF32, Device::cpu()};
}

template <typename T>
void narrow(const std::vector<float>& src, const TensorView& dst) {
  T* p = dst.as<T>();
  for (size_t i = 0; i < src.size(); ++i) p[i] = from_float<T>(src[i]);
}

}  // namespace

struct OneDnn::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<MatmulKey, dnnl::matmul> cache;
  // (numel, dtype) -> forward primitive descriptor and primitives.
  std::map<std::pair<int64_t, int>, dnnl::eltwise_forward::primitive_desc> gelu_pds;
  std::map<std::pair<int64_t, int>, dnnl::eltwise_forward> gelu_fwd;
  std::map<std::pair<int64_t, int>, dnnl::eltwise_backward> gelu_bwd;
  // Per dtype: false once oneDNN said it has no kernel for it on this CPU (asked once).
  std::map<int, bool> native_matmul;
  std::map<int, bool> native_gelu;
  std::mutex tile_mutex;
  std::map<TileKey, TilePrimitive> tiles;
  std::map<int, bool> native_tile;  // per dtype, asked once

  bool tile_supported(DType dtype) {
    if (dtype == DType::kF32) return true;
    std::lock_guard<std::mutex> lock(tile_mutex);
    const int dt = static_cast<int>(dtype);
    auto it = native_tile.find(dt);
    if (it != native_tile.end()) return it->second;
    bool ok = true;
    try {
      Tile probe;
      probe.m = probe.n = probe.k = 16;
      probe.dtype = dtype;
      tile_primitive_locked(resolved(probe));
    } catch (const dnnl::error& e) {
      if (e.status != dnnl_unimplemented) throw;
      ok = false;
    }
    return native_tile[dt] = ok;
  }
  // The tile with its leading dimensions resolved (0: dense).
  static Tile resolved(Tile t) {
    if (t.lda == 0) t.lda = t.ta ? t.m : t.k;
    if (t.ldb == 0) t.ldb = t.tb ? t.k : t.n;
    if (t.ldc == 0) t.ldc = t.n;
    return t;
  }
  const TilePrimitive& tile_primitive_locked(const Tile& t) {
    const TileKey key{t.m,   t.n,   t.k,  t.ta, t.tb, t.alpha, t.beta, static_cast<int>(t.dtype),
                      t.lda, t.ldb, t.ldc};
    auto it = tiles.find(key);
    if (it != tiles.end()) return it->second;
    using dims = dnnl::memory::dims;
    const auto dt = to_dnnl(t.dtype);
    TilePrimitive p;
    p.a = dnnl::memory::desc(dims{t.m, t.k}, dt, t.ta ? dims{1, t.lda} : dims{t.lda, 1});
    p.b = dnnl::memory::desc(dims{t.k, t.n}, dt, t.tb ? dims{1, t.ldb} : dims{t.ldb, 1});
    p.c = dnnl::memory::desc(dims{t.m, t.n}, dnnl::memory::data_type::f32, dims{t.ldc, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (t.alpha != 1.0f) attr.set_output_scales(0, {t.alpha});
    dnnl::post_ops ops;
    if (t.beta != 0.0f) ops.append_sum(t.beta);
    attr.set_post_ops(ops);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(p.a, p.b, p.c), attr, engine);
    p.scratchpad = pd.scratchpad_desc();
    p.matmul = dnnl::matmul(pd);
    return tiles.emplace(key, std::move(p)).first->second;
  }
  void tile(const Tile& tile, const void* a, const void* b, float* c) {
    const Tile t = resolved(tile);
    if (t.dtype == DType::kF32) {
      // Inside a parallel region oneDNN's sgemm runs on the calling thread alone.
      const dnnl_status_t status = dnnl_sgemm(
          t.ta ? 'T' : 'N', t.tb ? 'T' : 'N', t.m, t.n, t.k, t.alpha, static_cast<const float*>(a),
          t.lda, static_cast<const float*>(b), t.ldb, t.beta, c, t.ldc);
      if (status != dnnl_success) throw dnnl::error(status, "dnnl_sgemm");
      return;
    }
    const TilePrimitive* p;
    {
      std::lock_guard<std::mutex> lock(tile_mutex);
      p = &tile_primitive_locked(t);  // std::map nodes stay put
    }
    thread_local std::vector<char> scratch;
    if (scratch.size() < p->scratchpad.get_size()) scratch.resize(p->scratchpad.get_size());
    dnnl::stream stream(engine);  // one per call: never shared between threads
    p->matmul.execute(stream,
                      {{DNNL_ARG_SRC, dnnl::memory(p->a, engine, const_cast<void*>(a))},
                       {DNNL_ARG_WEIGHTS, dnnl::memory(p->b, engine, const_cast<void*>(b))},
                       {DNNL_ARG_DST, dnnl::memory(p->c, engine, c)},
                       {DNNL_ARG_SCRATCHPAD, dnnl::memory(p->scratchpad, engine, scratch.data())}});
  }

  dnnl::memory::desc flat(int64_t n, DType dtype) {
    return dnnl::memory::desc({n}, to_dnnl(dtype), dnnl::memory::format_tag::a);
  }
  const dnnl::eltwise_forward::primitive_desc& gelu_pd(int64_t n, DType dtype) {
    auto key = std::make_pair(n, static_cast<int>(dtype));
    auto it = gelu_pds.find(key);
    if (it != gelu_pds.end()) return it->second;
    dnnl::eltwise_forward::desc desc(dnnl::prop_kind::forward_training,
                                     dnnl::algorithm::eltwise_gelu_tanh, flat(n, dtype), 0.f, 0.f);
    return gelu_pds.emplace(key, dnnl::eltwise_forward::primitive_desc(desc, engine)).first->second;
  }
  // Whether oneDNN has forward and backward GeLU kernels for the dtype on this CPU (asked once).
  bool gelu_supported(DType dtype) {
    const int dt = static_cast<int>(dtype);
    auto it = native_gelu.find(dt);
    if (it != native_gelu.end()) return it->second;
    bool ok = true;
    try {
      const auto md = flat(64, dtype);
      dnnl::eltwise_backward::desc desc(dnnl::algorithm::eltwise_gelu_tanh, md, md, 0.f, 0.f);
      dnnl::eltwise_backward::primitive_desc pd(desc, engine, gelu_pd(64, dtype));
    } catch (const dnnl::error& e) {
      if (e.status != dnnl_unimplemented) throw;
      ok = false;
    }
    return native_gelu[dt] = ok;
  }
  void gelu(const TensorView& out, const TensorView& in) {
    auto key = std::make_pair(in.numel(), static_cast<int>(in.dtype));
    auto it = gelu_fwd.find(key);
    if (it == gelu_fwd.end()) {
      it = gelu_fwd.emplace(key, dnnl::eltwise_forward(gelu_pd(in.numel(), in.dtype))).first;
    }
    const auto md = flat(in.numel(), in.dtype);
    it->second.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(md, engine, in.data)},
                                {DNNL_ARG_DST, dnnl::memory(md, engine, out.data)}});
    stream.wait();
  }
  void gelu_backward(const TensorView& grad_in, const TensorView& grad_out,
                     const TensorView& input) {
    const int64_t n = input.numel();
    auto key = std::make_pair(n, static_cast<int>(input.dtype));
    auto it = gelu_bwd.find(key);
    if (it == gelu_bwd.end()) {
      const auto md = flat(n, input.dtype);
      dnnl::eltwise_backward::desc desc(dnnl::algorithm::eltwise_gelu_tanh, md, md, 0.f, 0.f);
      dnnl::eltwise_backward::primitive_desc pd(desc, engine, gelu_pd(n, input.dtype));
      it = gelu_bwd.emplace(key, dnnl::eltwise_backward(pd)).first;
    }
    const auto md = flat(n, input.dtype);
    it->second.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(md, engine, input.data)},
                                {DNNL_ARG_DIFF_DST, dnnl::memory(md, engine, grad_out.data)},
                                {DNNL_ARG_DIFF_SRC, dnnl::memory(md, engine, grad_in.data)}});
    stream.wait();
  }

  dnnl::matmul& primitive(const GemmArgs& args, const GemmDims& d, bool fuse_bias, bool fuse_gelu) {
    MatmulKey key{d.m,
                  d.n,
                  d.k,
                  args.transpose_a,
                  args.transpose_b,
                  static_cast<int>(args.a.dtype),
                  static_cast<int>(args.c.dtype),
                  fuse_bias,
                  fuse_gelu,
                  args.alpha,
                  args.beta};
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;

    using dims = dnnl::memory::dims;
    const auto in_dt = to_dnnl(args.a.dtype);
    const auto out_dt = to_dnnl(args.c.dtype);
    // A transposed operand is the same memory with swapped strides: no copy.
    dnnl::memory::desc a_md(dims{d.m, d.k}, in_dt, args.transpose_a ? dims{1, d.m} : dims{d.k, 1});
    dnnl::memory::desc b_md(dims{d.k, d.n}, in_dt, args.transpose_b ? dims{1, d.k} : dims{d.n, 1});
    dnnl::memory::desc c_md(dims{d.m, d.n}, out_dt, dims{d.n, 1});
    dnnl::primitive_attr attr;
    if (args.alpha != 1.0f) attr.set_output_scales(0, {args.alpha});
    dnnl::post_ops ops;
    if (args.beta != 0.0f) ops.append_sum(args.beta);
    if (fuse_gelu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0.0f, 0.0f);
    attr.set_post_ops(ops);
    std::unique_ptr<dnnl::matmul::desc> desc;
    if (fuse_bias) {
      dnnl::memory::desc bias_md(dims{1, d.n}, out_dt, dims{d.n, 1});
      desc = std::make_unique<dnnl::matmul::desc>(a_md, b_md, bias_md, c_md);
    } else {
      desc = std::make_unique<dnnl::matmul::desc>(a_md, b_md, c_md);
    }
    dnnl::matmul::primitive_desc pd(*desc, attr, engine);
    return cache.emplace(key, dnnl::matmul(pd)).first->second;
  }

  void run_native(const GemmArgs& args, const GemmDims& d) {
    const bool has_gelu = args.epilogue == Epilogue::kGelu || args.epilogue == Epilogue::kBiasGelu;
    const bool bias = args.epilogue == Epilogue::kBias || args.epilogue == Epilogue::kBiasGelu;
    // oneDNN adds the bias after the output scale; fuse it only where that equals our order.
    const bool fuse_bias = bias && args.alpha == 1.0f;
    const bool save_gelu_input = has_gelu && args.gelu_input.data != nullptr;
    // The GeLU post-op must come after the bias, so it is fused only when the bias is.
    const bool fuse_gelu = has_gelu && !save_gelu_input && (fuse_bias || !bias);

    // When the GeLU input is kept, the matmul writes it there and GeLU reads it back.
    const TensorView dst = save_gelu_input ? args.gelu_input : args.c;
    if (save_gelu_input && args.beta != 0.0f) {
      std::memcpy(dst.data, args.c.data, args.c.bytes());
    }
    dnnl::matmul& prim = primitive(args, d, fuse_bias, fuse_gelu);
    using dims = dnnl::memory::dims;
    auto md = [](const TensorView& v, dims shape, dims strides) {
      return dnnl::memory::desc(shape, to_dnnl(v.dtype), strides);
    };
    dnnl::memory a_mem(md(args.a, {d.m, d.k}, args.transpose_a ? dims{1, d.m} : dims{d.k, 1}),
                       engine, args.a.data);
    dnnl::memory b_mem(md(args.b, {d.k, d.n}, args.transpose_b ? dims{1, d.k} : dims{d.n, 1}),
                       engine, args.b.data);
    dnnl::memory c_mem(md(dst, {d.m, d.n}, {d.n, 1}), engine, dst.data);
    std::unordered_map<int, dnnl::memory> exec_args{
        {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}};
    if (fuse_bias) {
      exec_args.emplace(DNNL_ARG_BIAS,
                        dnnl::memory(md(args.bias, {1, d.n}, {d.n, 1}), engine, args.bias.data));
    }
    prim.execute(stream, exec_args);
    stream.wait();

    if (bias && !fuse_bias) {  // alpha != 1: bias after the scaled product, as documented
      dispatch_storage(dst.dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        T* c = dst.as<T>();
        const T* b = args.bias.as<T>();
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < d.m; ++i) {
          for (int64_t j = 0; j < d.n; ++j) {
            c[i * d.n + j] = from_float<T>(to_float(c[i * d.n + j]) + to_float(b[j]));
          }
        }
      });
    }
    if (has_gelu && !fuse_gelu) gelu(args.c, dst);
  }

  void bias_grad(const GemmArgs& args, const GemmDims& d) {
    // bias_grad[i] = sum over k of op(A)[i, k], accumulated in f32.
    dispatch_storage(args.a.dtype, [&](auto in_tag) {
      using TIn = typename decltype(in_tag)::type;
      const TIn* a = args.a.as<TIn>();
      std::vector<float> sums(static_cast<size_t>(d.m), 0.0f);
      if (args.transpose_a) {  // A stored k x m: sum the rows
        for (int64_t kk = 0; kk < d.k; ++kk) {
          for (int64_t i = 0; i < d.m; ++i) sums[i] += to_float(a[kk * d.m + i]);
        }
      } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < d.m; ++i) {
          float s = 0.0f;
          for (int64_t kk = 0; kk < d.k; ++kk) s += to_float(a[i * d.k + kk]);
          sums[i] = s;
        }
      }
      dispatch_storage(args.bias_grad.dtype, [&](auto out_tag) {
        using TOut = typename decltype(out_tag)::type;
        TOut* out = args.bias_grad.as<TOut>();
        for (int64_t i = 0; i < d.m; ++i) out[i] = from_float<TOut>(sums[i]);
      });
    });
  }

  // Computes a 16-bit (T) matmul in f32 and rounds the outputs back to their dtypes.
  template <typename T>
  void run_via_f32(const GemmArgs& args, const GemmDims& d) {
    std::vector<float> a = widen<T>(args.a), b = widen<T>(args.b);
    const bool c_is_16bit = args.c.dtype == args.a.dtype;
    std::vector<float> c, bias, aux;
    if (c_is_16bit) {
      c = args.beta != 0.0f ? widen<T>(args.c) : std::vector<float>(args.c.numel());
      if (args.bias.data != nullptr) bias = widen<T>(args.bias);
      if (args.gelu_input.data != nullptr) aux.resize(static_cast<size_t>(args.gelu_input.numel()));
    }
    GemmArgs wide = args;
    wide.a = f32_view(a, args.a.shape);
    wide.b = f32_view(b, args.b.shape);
    if (c_is_16bit) {
      wide.c = f32_view(c, args.c.shape);
      if (args.bias.data != nullptr) wide.bias = f32_view(bias, args.bias.shape);
      if (args.gelu_input.data != nullptr) wide.gelu_input = f32_view(aux, args.gelu_input.shape);
    }
    wide.bias_grad = TensorView{};  // the caller computes it from the 16-bit A
    run_native(wide, d);
    if (c_is_16bit) {
      narrow<T>(c, args.c);
      if (args.gelu_input.data != nullptr) narrow<T>(aux, args.gelu_input);
    }
  }

  // Native when oneDNN has a kernel for the dtype on this CPU, else through f32.
  void run(const GemmArgs& args, const GemmDims& d) {
    const int dt = static_cast<int>(args.a.dtype);
    auto known = native_matmul.find(dt);
    if (args.a.dtype == DType::kF32 || known == native_matmul.end() || known->second) {
      try {
        run_native(args, d);
        native_matmul[dt] = true;
        return;
      } catch (const dnnl::error& e) {
        if (e.status != dnnl_unimplemented || args.a.dtype == DType::kF32 ||
            known != native_matmul.end()) {
          throw;
        }
        native_matmul[dt] = false;
      }
    }
    if (args.a.dtype == DType::kF16) {
      run_via_f32<f16_t>(args, d);
    } else {
      run_via_f32<bf16_t>(args, d);
    }
  }
};

OneDnn::OneDnn() : impl_(std::make_unique<Impl>()) {}
OneDnn::~OneDnn() = default;

std::string OneDnn::version() const {
  const dnnl_version_t* v = dnnl::version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch);
}

bool OneDnn::gelu(TensorView out, TensorView in) {
  if (in.numel() == 0) return false;
  if (impl_->gelu_supported(in.dtype)) {
    impl_->gelu(out, in);
    return true;
  }
  if (in.dtype == DType::kF32 || !impl_->gelu_supported(DType::kF32)) return false;
  // No 16-bit kernel on this CPU: the f32 one, on a widened copy, rounded back (the scalar
  // fallback would compute in f32 too, about 20x slower).
  dispatch_storage(in.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<float> x = widen<T>(in), y(x.size());
    impl_->gelu(f32_view(y, in.shape), f32_view(x, in.shape));
    narrow<T>(y, out);
  });
  return true;
}

bool OneDnn::gelu_backward(TensorView grad_in, TensorView grad_out, TensorView input) {
  if (input.numel() == 0) return false;
  if (impl_->gelu_supported(input.dtype)) {
    impl_->gelu_backward(grad_in, grad_out, input);
    return true;
  }
  if (input.dtype == DType::kF32 || !impl_->gelu_supported(DType::kF32)) return false;
  dispatch_storage(input.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    std::vector<float> x = widen<T>(input), dy = widen<T>(grad_out), dx(x.size());
    impl_->gelu_backward(f32_view(dx, input.shape), f32_view(dy, input.shape),
                         f32_view(x, input.shape));
    narrow<T>(dx, grad_in);
  });
  return true;
}

DType OneDnn::tile_dtype(DType dtype) { return impl_->tile_supported(dtype) ? dtype : DType::kF32; }

void OneDnn::tile_matmul(const Tile& tile, const void* a, const void* b, float* c) {
  if (tile.m == 0 || tile.n == 0) return;
  try {
    impl_->tile(tile, a, b, c);
  } catch (const dnnl::error& e) {
    WEFT_THROW(ErrorCode::kDnnl, "oneDNN tile matmul failed for m=", tile.m, " n=", tile.n,
               " k=", tile.k, " (", dtype_name(tile.dtype), "): ", e.what());
  }
}

void OneDnn::matmul(const GemmArgs& args) {
  const GemmDims d = check_gemm_args(args, Device::cpu());
  if (d.m == 0 || d.n == 0) return;
  WEFT_CHECK(d.k > 0, "gemm: inner dimension k is 0 (A ", args.a.shape.str(), ", B ",
             args.b.shape.str(), ")");
  try {
    impl_->run(args, d);
  } catch (const dnnl::error& e) {
    WEFT_THROW(ErrorCode::kDnnl, "oneDNN matmul failed for m=", d.m, " n=", d.n, " k=", d.k, " (",
               dtype_name(args.a.dtype), " -> ", dtype_name(args.c.dtype), "): ", e.what());
  }
  if (args.epilogue == Epilogue::kBiasGrad) impl_->bias_grad(args, d);
}

}  // namespace weft
