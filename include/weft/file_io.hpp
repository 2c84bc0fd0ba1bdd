// Whole files written atomically and read back: the durable-write discipline that checkpoints,
// manifests and traces share.
#pragma once

#include <cstddef>
#include <string>

namespace weft {

// Writes into `path + ".tmp.<pid>"`; commit() fsyncs it, renames it over `path` and fsyncs the
// directory, so that a crash leaves either the old file or the new one, never a torn one.
// Destroyed without commit(), it removes the temporary file. Every failure is a weft::Error
// (kIo) naming the file.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path);
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;

  void write(const void* data, size_t bytes);
  // Overwrites bytes already written, at `offset` from the file's start (a header whose fields
  // are known only after the data, such as checksums); the file's length does not change.
  void write_at(size_t offset, const void* data, size_t bytes);
  void commit();

 private:
  void write_fully(const void* data, size_t bytes, size_t offset);

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  size_t written_ = 0;
  bool committed_ = false;
};

// Replaces `path` with `contents` atomically (AtomicWriter). Throws weft::Error (kIo) naming the
// file on failure.
void write_file_atomically(const std::string& path, const std::string& contents);
// The default limit of read_file: larger files are refused before reading (2 GiB).
constexpr size_t kReadFileLimit = size_t{2} << 30;
// The whole file as bytes. weft::Error (kIo) naming the path when it cannot be read, is not a
// regular file (a device such as /dev/zero, a FIFO, a directory) or holds more than `max_bytes`.
std::string read_file(const std::string& path, size_t max_bytes = kReadFileLimit);

}  // namespace weft
