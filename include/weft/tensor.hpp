// Device, TensorView (non-owning) and Tensor (owning): dense row-major buffers on CPU or GPU.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "weft/checked.hpp"
#include "weft/dtype.hpp"
#include "weft/shape.hpp"

namespace weft {

enum class DeviceKind { kCpu, kCuda };

struct Device {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU

  static Device cpu() { return Device{DeviceKind::kCpu, 0}; }
  static Device cuda(int index) { return Device{DeviceKind::kCuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::kCpu; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu", "cuda:0"
};

// A typed window on memory that someone else owns. Dense and row-major; cheap to copy.
struct TensorView {
  void* data = nullptr;
  Shape shape;
  DType dtype = DType::kF32;
  Device device;

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const {
    return static_cast<size_t>(
        checked_mul(numel(), static_cast<int64_t>(dtype_size(dtype)), "byte count of a tensor"));
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  // Rows [begin, begin + count) of the 2D matrix view (leading dims folded), still contiguous.
  TensorView rows(int64_t begin, int64_t count) const;
  // The same memory seen with another shape of equal numel.
  TensorView reshaped(const Shape& new_shape) const;
  std::string str() const;  // "f32[4, 8]@cpu"
};

// Where a Tensor's memory comes from. Every Backend (backend.hpp) is one; the core level knows
// only this interface, so it does not depend on the backends above it.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr) noexcept = 0;
};

// Owns a buffer allocated by an Allocator (a Backend). Move-only: a copy of the data is an
// explicit Backend::copy. The Backend must outlive every Tensor it allocated.
class Tensor {
 public:
  Tensor() = default;
  Tensor(Allocator& allocator, const Shape& shape, DType dtype);

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  bool defined() const { return storage_ != nullptr; }
  // Gives the same data another shape of equal numel.
  void reshape(const Shape& shape) { view_ = view_.reshaped(shape); }
  TensorView view() const { return view_; }
  operator TensorView() const { return view_; }  // NOLINT: a Tensor is usable wherever a view is
  void* data() const { return view_.data; }
  template <typename T>
  T* as() const {
    return view_.as<T>();
  }
  const Shape& shape() const { return view_.shape; }
  DType dtype() const { return view_.dtype; }
  Device device() const { return view_.device; }
  int64_t numel() const { return view_.numel(); }
  size_t bytes() const { return view_.bytes(); }

 private:
  std::shared_ptr<void> storage_;  // shared_ptr only for its type-erased deleter
  TensorView view_;
};

// Bytes of memory the views cover together, each byte once however many views overlap it: the
// exact size of a set of saved activations when layers keep views of each other's tensors.
int64_t distinct_bytes(const std::vector<TensorView>& views);

}  // namespace weft
