// AtomicWriter (temporary file, fsync, rename, directory fsync), write_file_atomically, read_file.
#include "weft/file_io.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "weft/error.hpp"

namespace weft {

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string directory_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

AtomicWriter::AtomicWriter(const std::string& path)
    : path_(path), tmp_path_(path + ".tmp." + std::to_string(::getpid())) {
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    WEFT_THROW(ErrorCode::kIo, "cannot create '", tmp_path_, "' (the temporary file for '", path_,
               "'): ", errno_text());
  }
}

AtomicWriter::~AtomicWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicWriter::write(const void* data, size_t bytes) {
  write_fully(data, bytes, written_);
  written_ += bytes;
}

void AtomicWriter::write_at(size_t offset, const void* data, size_t bytes) {
  WEFT_CHECK(offset <= written_ && bytes <= written_ - offset, "AtomicWriter('", path_,
             "'): write_at [", offset, ", ", offset + bytes, ") is beyond the ", written_,
             " bytes written");
  write_fully(data, bytes, offset);
}

// Writes all `bytes` at `offset` of the temporary file (retrying short and interrupted writes).
void AtomicWriter::write_fully(const void* data, size_t bytes, size_t offset) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      WEFT_THROW(ErrorCode::kIo, "cannot write '", tmp_path_, "' (the temporary file for '", path_,
                 "'): ", errno_text());
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<size_t>(n);
  }
}

void AtomicWriter::commit() {
  if (::fsync(fd_) != 0) {
    WEFT_THROW(ErrorCode::kIo, "cannot fsync '", tmp_path_, "' (the temporary file for '", path_,
               "'): ", errno_text());
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    WEFT_THROW(ErrorCode::kIo, "cannot close '", tmp_path_, "' (the temporary file for '", path_,
               "'): ", errno_text());
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    WEFT_THROW(ErrorCode::kIo, "cannot rename '", tmp_path_, "' to '", path_, "': ", errno_text());
  }
  committed_ = true;
  // The rename is durable only once the directory entry is on disk.
  const std::string dir = directory_of(path_);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    WEFT_THROW(ErrorCode::kIo, "wrote '", path_, "' but cannot open its directory '", dir,
               "' to fsync it: ", errno_text());
  }
  // EINVAL: the file system does not support fsync on directories; nothing more to do there.
  const bool synced = ::fsync(dir_fd) == 0 || errno == EINVAL;
  const std::string sync_error = synced ? "" : errno_text();
  ::close(dir_fd);
  if (!synced) {
    WEFT_THROW(ErrorCode::kIo, "wrote '", path_, "' but cannot fsync its directory '", dir,
               "': ", sync_error);
  }
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  AtomicWriter out(path);
  out.write(contents.data(), contents.size());
  out.commit();
}

std::string read_file(const std::string& path, size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below like any other
  // file that is not a regular one (/dev/zero would be read until memory runs out).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) WEFT_THROW(ErrorCode::kIo, "cannot open '", path, "' for reading: ", errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    WEFT_THROW(ErrorCode::kIo, "cannot stat '", path, "': ", why);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    WEFT_THROW(ErrorCode::kIo, "'", path,
               "' is not a regular file (a directory, device, FIFO or socket); refused");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    WEFT_THROW(ErrorCode::kIo, "'", path, "' holds ", st.st_size,
               " bytes, more than the limit of ", max_bytes, " bytes for this file");
  }
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string why = errno_text();
      ::close(fd);
      WEFT_THROW(ErrorCode::kIo, "cannot read '", path, "': ", why);
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {  // it grew while being read
      ::close(fd);
      WEFT_THROW(ErrorCode::kIo, "'", path, "' grew past the limit of ", max_bytes,
                 " bytes for this file while being read");
    }
    out.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

}  // namespace weft
