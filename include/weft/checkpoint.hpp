// Checkpoint files: safetensors read/write (atomic whole-file writes are in file_io.hpp).
//
// The safetensors layout (https://github.com/huggingface/safetensors): 8 bytes of little-endian
// u64 N, then N bytes of UTF-8 JSON, padded with spaces so that N is a multiple of 8, then the raw
// little-endian data. The JSON maps "__metadata__" to {string: string} (omitted when empty) and
// every tensor name to {"dtype": "F32"|"BF16"|"F16"|"I32", "shape": [...], "data_offsets":
// [begin, end]}, with offsets relative to the start of the data section. Files written here load
// with the reference `safetensors` Python package and vice versa (for these four dtypes).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "weft/dtype.hpp"
#include "weft/file_io.hpp"  // write_file_atomically, read_file
#include "weft/shape.hpp"
#include "weft/tensor.hpp"

namespace weft {

class Backend;

struct NamedTensor {
  std::string name;
  TensorView view;  // on the host or on `backend`'s device; dense by construction
};

// What a writer records besides the tensors.
struct SafetensorsOptions {
  // Record each tensor's XXH3-64 hash (xxHash) of its data bytes in the metadata, under the key
  // "xxh3_64:<tensor name>" as 16 lowercase hexadecimal digits; SafetensorsReader verifies it on
  // every read. Off by default: the file is then byte for byte the reference writer's.
  bool checksums = false;
};
// The metadata key prefix of the per-tensor checksums.
inline constexpr char kSafetensorsChecksumPrefix[] = "xxh3_64:";

// Writes `tensors` and `metadata` to `path` atomically: into `path + ".tmp.<pid>"`, fsync'd,
// renamed over `path`, then the directory fsync'd, so that a crash leaves either the old file or
// the new one, never a torn one. Device views are copied to the host through `backend`, one
// tensor at a time. The file is byte for byte what the reference writer makes (data ordered by
// dtype, F32, I32, BF16, F16, then by name, so every tensor is aligned to its element size; the
// metadata keys sorted).
// Throws weft::Error: kInvalidArgument for an empty, reserved ("__metadata__") or duplicate name
// or a view without data; kIo (naming the file) when the file system fails.
void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Backend& backend);
// The same with options (checksums). A metadata key starting with kSafetensorsChecksumPrefix is
// then an error (kInvalidArgument).
void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Backend& backend,
                      const SafetensorsOptions& options);

// A tensor of a file written piece by piece (save_safetensors_streamed).
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
};

// The same file as save_safetensors, for data that is not in memory all at once: the header is
// written from `entries`, then each tensor's bytes are asked for in file order, one at a time:
// fill(entry, scratch) returns a pointer to entry's dense host bytes, its own or `scratch`'s
// (resized to the tensor's bytes before the call). Memory: the largest tensor.
void save_safetensors_streamed(
    const std::string& path, const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata,
    const std::function<const void*(const SafetensorsEntry&, std::vector<unsigned char>& scratch)>&
        fill);
void save_safetensors_streamed(
    const std::string& path, const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata,
    const std::function<const void*(const SafetensorsEntry&, std::vector<unsigned char>& scratch)>&
        fill,
    const SafetensorsOptions& options);

// An open safetensors file. The constructor reads and validates the whole header against the
// file's size (header length, JSON, dtypes, shapes, offsets in range, contiguous, not overlapping
// and matching dtype x numel, no truncated data); any problem is a weft::Error (kIo) naming the
// file and what is wrong; so is a checksum key (kSafetensorsChecksumPrefix) that names no tensor
// or is not 16 hexadecimal digits. A tensor with a checksum is verified the first time any of
// its bytes are read (read_block of a part hashes the whole tensor first): a mismatch is a
// weft::Error (kIo) naming the file, the tensor and both hashes. The file stays open, so read()
// sees the data that was validated even if `path` is replaced meanwhile. Move-only.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(SafetensorsReader&& other) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&& other) noexcept;
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throw weft::Error (kInvalidArgument) naming the file when `name` is absent.
  Shape shape(const std::string& name) const;
  DType dtype(const std::string& name) const;
  // Whether the file records a checksum of tensor `name`.
  bool has_checksum(const std::string& name) const;
  // Hashes tensor `name`'s data (streamed, 1 MiB at a time) and compares it with its checksum
  // (nothing to do without one, or when it was verified already); weft::Error (kIo) on mismatch.
  void verify(const std::string& name) const;
  // Reads tensor `name` into `dst` (host, or `backend`'s device through a host buffer). dst's
  // dtype and shape must equal the stored ones exactly; otherwise weft::Error (kInvalidArgument)
  // naming the tensor, the file, what dst expects and what the file holds.
  void read(const std::string& name, TensorView dst, Backend& backend) const;
  // Reads elements [begin, begin + count) along dimension `dim` of tensor `name` (all of the other
  // dimensions) into host memory: `dst` is a dense tensor of the stored shape but dst_extent
  // along `dim`, and the block lands at dst_begin there. One pread per contiguous run (one in all
  // for dim 0). weft::Error naming the file and tensor when the block is out of range.
  void read_block(const std::string& name, int dim, int64_t begin, int64_t count, void* dst,
                  int64_t dst_extent, int64_t dst_begin) const;

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    uint64_t begin;  // absolute file offsets
    uint64_t end;
    bool has_checksum = false;
    uint64_t checksum = 0;
    mutable bool verified = false;  // hashed once: later reads of the open file trust it
  };
  void check_hash(const std::string& name, const Entry& e, uint64_t hash) const;
  const Entry& entry(const std::string& name) const;

  std::string path_;
  int fd_ = -1;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
};

}  // namespace weft
