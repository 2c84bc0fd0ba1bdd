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
  void commit();

 private:
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Replaces `path` with `contents` atomically (AtomicWriter). Throws weft::Error (kIo) naming the
// file on failure.
void write_file_atomically(const std::string& path, const std::string& contents);
// The whole file as bytes; weft::Error (kIo) naming the path when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace weft
