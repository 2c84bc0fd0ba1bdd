// safetensors writer (through the atomic AtomicWriter of file_io.hpp) and validating reader.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "weft/backend.hpp"
#include "weft/checkpoint.hpp"
#include "weft/error.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; weft writes host memory as is"
#endif

namespace weft {

namespace {

// The reference implementation refuses larger headers; so do we, before allocating them.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";

std::string errno_text() { return std::strerror(errno); }

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
  }
  WEFT_THROW(ErrorCode::kInternal, "unknown dtype ", static_cast<int>(dtype));
}

// Position in the reference implementation's Dtype enum (F16 < BF16 < I32 < F32).
int reference_dtype_rank(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return 0;
    case DType::kBF16:
      return 1;
    case DType::kI32:
      return 2;
    case DType::kF32:
      return 3;
  }
  WEFT_THROW(ErrorCode::kInternal, "unknown dtype ", static_cast<int>(dtype));
}

// Returns false for a spelling weft does not read; `supported_elsewhere` tells the formats that
// the safetensors spec has (so the message can say "unsupported" rather than "unknown").
bool parse_safetensors_dtype(const std::string& name, DType* dtype, bool* supported_elsewhere) {
  static const std::map<std::string, DType> kOurs = {
      {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16}, {"I32", DType::kI32}};
  static const std::set<std::string> kTheirs = {
      "BOOL", "U8",      "I8",      "U16",     "I16", "U32",     "U64",     "I64",
      "F64",  "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};
  auto it = kOurs.find(name);
  if (it != kOurs.end()) {
    *dtype = it->second;
    return true;
  }
  *supported_elsewhere = kTheirs.count(name) != 0;
  return false;
}

// Reads exactly `bytes` at `offset`; a short read means the file shrank since it was validated.
void pread_all(int fd, void* data, size_t bytes, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      WEFT_THROW(ErrorCode::kIo, "cannot read '", path, "' at byte ", offset, ": ", errno_text());
    }
    if (n == 0) {
      WEFT_THROW(ErrorCode::kIo, "unexpected end of file in '", path, "' at byte ", offset,
                 " (the file was truncated)");
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

std::string hex64(uint64_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) out[static_cast<size_t>(i)] = kDigits[v & 15];
  return out;
}

bool parse_hex64(const std::string& text, uint64_t* v) {
  if (text.size() != 16) return false;
  *v = 0;
  for (char c : text) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    *v = (*v << 4) | static_cast<uint64_t>(d);
  }
  return true;
}

bool is_checksum_key(const std::string& key) {
  return key.compare(0, sizeof(kSafetensorsChecksumPrefix) - 1, kSafetensorsChecksumPrefix) == 0;
}

uint64_t checked_bytes(const std::vector<int64_t>& dims, size_t element_size, bool* overflow) {
  uint64_t n = element_size;
  *overflow = false;
  for (int64_t d : dims) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) *overflow = true;
  }
  return n;
}

}  // namespace

void save_safetensors_streamed(
    const std::string& path, const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata,
    const std::function<const void*(const SafetensorsEntry&, std::vector<unsigned char>& scratch)>&
        fill) {
  save_safetensors_streamed(path, entries, metadata, fill, SafetensorsOptions{});
}

void save_safetensors_streamed(
    const std::string& path, const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata,
    const std::function<const void*(const SafetensorsEntry&, std::vector<unsigned char>& scratch)>&
        fill,
    const SafetensorsOptions& options) {
  if (options.checksums) {
    for (const auto& kv : metadata) {
      WEFT_CHECK(!is_checksum_key(kv.first), "save_safetensors('", path, "'): metadata key '",
                 kv.first, "' is reserved for the checksums");
    }
  }
  std::set<std::string> seen;
  for (const SafetensorsEntry& t : entries) {
    WEFT_CHECK(!t.name.empty(), "save_safetensors('", path, "'): empty tensor name");
    WEFT_CHECK(t.name != kMetadataKey, "save_safetensors('", path, "'): tensor name '",
               kMetadataKey, "' is reserved for the metadata");
    WEFT_CHECK(seen.insert(t.name).second, "save_safetensors('", path,
               "'): duplicate tensor name '", t.name, "'");
  }

  // The reference writer's order, so that our files are byte-identical to its files: dtypes in
  // descending order of its Dtype enum (F32, I32, BF16, F16: never a smaller element before a
  // larger one, so every tensor stays aligned to its element size), then names.
  std::vector<const SafetensorsEntry*> order;
  for (const SafetensorsEntry& t : entries) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    const int ra = reference_dtype_rank(a->dtype), rb = reference_dtype_rank(b->dtype);
    return ra != rb ? ra > rb : a->name < b->name;
  });

  // With checksums, the header is written first with placeholders of the same length and
  // rewritten in place once the data has been hashed on its way to the file: one pass over it.
  std::map<std::string, uint64_t> hashes;
  if (options.checksums) {
    for (const SafetensorsEntry& t : entries) hashes[t.name] = 0;
  }
  auto header_text = [&]() {
    std::map<std::string, std::string> all = metadata;
    for (const auto& [name, hash] : hashes) all[kSafetensorsChecksumPrefix + name] = hex64(hash);
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!all.empty()) header[kMetadataKey] = all;
    uint64_t offset = 0;
    for (const SafetensorsEntry* t : order) {
      const uint64_t bytes = static_cast<uint64_t>(t->shape.numel()) * dtype_size(t->dtype);
      header[t->name] = {{"dtype", safetensors_dtype(t->dtype)},
                         {"shape", t->shape.dims()},
                         {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {
      WEFT_THROW(ErrorCode::kInvalidArgument, "save_safetensors('", path,
                 "'): a tensor name or metadata string is not valid UTF-8: ", e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  };
  const std::string text = header_text();

  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  AtomicWriter out(path);
  out.write(length, sizeof length);
  out.write(text.data(), text.size());
  std::vector<unsigned char> scratch;
  for (const SafetensorsEntry* t : order) {
    const size_t bytes = static_cast<size_t>(t->shape.numel()) * dtype_size(t->dtype);
    if (bytes == 0) {
      if (options.checksums) hashes[t->name] = XXH3_64bits(nullptr, 0);
      continue;
    }
    scratch.resize(bytes);
    const void* data = fill(*t, scratch);
    WEFT_CHECK(data != nullptr, "save_safetensors('", path, "'): tensor '", t->name,
               "' has no data");
    if (options.checksums) hashes[t->name] = XXH3_64bits(data, bytes);
    out.write(data, bytes);
  }
  if (options.checksums) {
    const std::string hashed = header_text();
    WEFT_CHECK(hashed.size() == text.size(), "save_safetensors('", path,
               "'): the header changed length when its checksums were filled in");
    out.write_at(8, hashed.data(), hashed.size());
  }
  out.commit();
}

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Backend& backend) {
  save_safetensors(path, tensors, metadata, backend, SafetensorsOptions{});
}

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata, Backend& backend,
                      const SafetensorsOptions& options) {
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, const TensorView*> views;
  for (const NamedTensor& t : tensors) {
    WEFT_CHECK(t.view.data != nullptr || t.view.numel() == 0, "save_safetensors('", path,
               "'): tensor '", t.name, "' (", t.view.str(), ") has no data");
    entries.push_back({t.name, t.view.dtype, t.view.shape});
    views[t.name] = &t.view;
  }
  save_safetensors_streamed(
      path, entries, metadata,
      [&](const SafetensorsEntry& e, std::vector<unsigned char>& scratch) -> const void* {
        const TensorView& v = *views.at(e.name);
        if (v.device.is_cpu()) return v.data;
        backend.copy(TensorView{scratch.data(), v.shape, v.dtype, Device::cpu()}, v);
        return scratch.data();
      },
      options);
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    WEFT_THROW(ErrorCode::kIo, "cannot open safetensors file '", path, "': ", errno_text());
  }
  // From here on a throw must not leak fd_: the destructor does not run for a failed constructor.
  try {
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
      WEFT_THROW(ErrorCode::kIo, "cannot stat '", path, "': ", errno_text());
    }
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    auto bad = [&](const auto&... what) {
      WEFT_THROW(ErrorCode::kIo, "invalid safetensors file '", path, "': ", what...);
    };
    if (file_size < 8) bad("it has ", file_size, " bytes, fewer than the 8-byte header length");

    unsigned char length[8];
    pread_all(fd_, length, 8, 0, path);
    uint64_t header_bytes = 0;
    for (int i = 0; i < 8; ++i) header_bytes |= static_cast<uint64_t>(length[i]) << (8 * i);
    if (header_bytes > file_size - 8) {
      bad("header length ", header_bytes, " exceeds the ", file_size - 8,
          " bytes after the length field");
    }
    if (header_bytes > kMaxHeaderBytes) {
      bad("header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
    }
    std::string text(header_bytes, '\0');
    pread_all(fd_, text.data(), text.size(), 8, path);

    // nlohmann keeps the last of duplicate keys silently; a checkpoint with two tensors of one
    // name is broken, so the parser callback looks for them.
    std::vector<std::set<std::string>> keys;
    std::string duplicate;
    auto on_event = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) keys.emplace_back();
      if (event == Event::object_end) keys.pop_back();
      if (event == Event::key && !keys.back().insert(parsed.get<std::string>()).second &&
          duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, on_event);
    } catch (const nlohmann::json::exception& e) {
      bad("malformed JSON header: ", e.what());
    }
    if (!duplicate.empty()) bad("duplicate key '", duplicate, "' in the JSON header");
    if (!header.is_object()) bad("the JSON header is a ", header.type_name(), ", not an object");

    const uint64_t data_start = 8 + header_bytes;
    const uint64_t data_bytes = file_size - data_start;
    for (const auto& [name, value] : header.items()) {
      if (name == kMetadataKey) {
        if (!value.is_object()) bad("\"", kMetadataKey, "\" is not an object");
        for (const auto& [key, v] : value.items()) {
          if (!v.is_string()) bad("metadata value of '", key, "' is not a string");
          metadata_[key] = v.get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (!value.is_object()) bad(where, " is not an object");
      if (!value.contains("dtype") || !value["dtype"].is_string()) {
        bad(where, " has no string \"dtype\"");
      }
      if (!value.contains("shape") || !value["shape"].is_array()) {
        bad(where, " has no \"shape\" array");
      }
      if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
          value["data_offsets"].size() != 2 || !value["data_offsets"][0].is_number_unsigned() ||
          !value["data_offsets"][1].is_number_unsigned()) {
        bad(where, " has no \"data_offsets\" pair of non-negative integers");
      }
      const std::string dtype_text = value["dtype"].get<std::string>();
      DType dtype = DType::kF32;
      bool supported_elsewhere = false;
      if (!parse_safetensors_dtype(dtype_text, &dtype, &supported_elsewhere)) {
        bad(where, " has ", supported_elsewhere ? "unsupported" : "unknown", " dtype '", dtype_text,
            "' (weft reads F32, BF16, F16 and I32)");
      }
      std::vector<int64_t> dims;
      for (const auto& d : value["shape"]) {
        if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 62)) {
          bad(where, " has an invalid dimension ", d.dump(), " in its shape ",
              value["shape"].dump());
        }
        dims.push_back(d.get<int64_t>());
      }
      bool overflow = false;
      const uint64_t bytes = checked_bytes(dims, dtype_size(dtype), &overflow);
      if (overflow) bad(where, " has a shape ", value["shape"].dump(), " too large to address");
      const uint64_t begin = value["data_offsets"][0].get<uint64_t>();
      const uint64_t end = value["data_offsets"][1].get<uint64_t>();
      if (begin > end) bad(where, " has data_offsets [", begin, ", ", end, "] with begin > end");
      if (end - begin != bytes) {
        bad(where, " has data_offsets [", begin, ", ", end, "] spanning ", end - begin,
            " bytes, but ", dtype_text, " ", value["shape"].dump(), " needs ", bytes);
      }
      entries_.emplace(name, Entry{dtype, Shape(dims), data_start + begin, data_start + end});
    }

    // Like the reference reader: the tensors tile the data section exactly, in offset order.
    std::vector<std::pair<const std::string*, const Entry*>> by_offset;
    for (const auto& [name, e] : entries_) by_offset.emplace_back(&name, &e);
    std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
      return std::make_pair(a.second->begin, a.second->end) <
             std::make_pair(b.second->begin, b.second->end);
    });
    uint64_t expected = data_start;
    const std::string* previous = nullptr;
    for (const auto& [name, e] : by_offset) {
      if (e->begin < expected) {
        bad("tensor '", *name, "' (data bytes [", e->begin - data_start, ", ", e->end - data_start,
            ")) overlaps tensor '", *previous, "' (ending at ", expected - data_start, ")");
      }
      if (e->begin > expected) {
        bad("a gap of unused data bytes [", expected - data_start, ", ", e->begin - data_start,
            ") before tensor '", *name, "'");
      }
      if (e->end > file_size) {
        bad("tensor '", *name, "' ends at data byte ", e->end - data_start, ", but the file has ",
            data_bytes, " data bytes (truncated data or offsets out of range)");
      }
      expected = e->end;
      previous = name;
    }
    if (expected != file_size) {
      bad(file_size - expected, " unused bytes after the last tensor (data section of ", data_bytes,
          " bytes, tensors end at ", expected - data_start, ")");
    }
    for (const auto& [key, value] : metadata_) {
      if (!is_checksum_key(key)) continue;
      const std::string name = key.substr(sizeof(kSafetensorsChecksumPrefix) - 1);
      auto it = entries_.find(name);
      if (it == entries_.end()) bad("checksum key '", key, "' names no tensor of the file");
      if (!parse_hex64(value, &it->second.checksum)) {
        bad("checksum '", key, "' is '", value, "', not 16 lowercase hexadecimal digits");
      }
      it->second.has_checksum = true;
    }
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsReader::SafetensorsReader(SafetensorsReader&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      metadata_(std::move(other.metadata_)),
      entries_(std::move(other.entries_)) {}

SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    metadata_ = std::move(other.metadata_);
    entries_ = std::move(other.entries_);
  }
  return *this;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

bool SafetensorsReader::contains(const std::string& name) const {
  return entries_.count(name) != 0;
}

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  WEFT_CHECK(it != entries_.end(), "no tensor '", name, "' in '", path_, "' (it holds ",
             entries_.size(), " tensors)");
  return it->second;
}

bool SafetensorsReader::has_checksum(const std::string& name) const {
  return entry(name).has_checksum;
}

void SafetensorsReader::check_hash(const std::string& name, const Entry& e, uint64_t hash) const {
  if (hash != e.checksum) {
    WEFT_THROW(ErrorCode::kIo, "checksum mismatch in '", path_, "': tensor '", name, "' (",
               dtype_name(e.dtype), e.shape.str(), ", file bytes [", e.begin, ", ", e.end,
               ")) hashes to xxh3_64 ", hex64(hash), ", but the file records ", hex64(e.checksum),
               ": its data changed after it was written");
  }
  e.verified = true;
}

void SafetensorsReader::verify(const std::string& name) const {
  const Entry& e = entry(name);
  if (!e.has_checksum || e.verified) return;
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(XXH3_createState(),
                                                                        XXH3_freeState);
  WEFT_CHECK(state != nullptr && XXH3_64bits_reset(state.get()) == XXH_OK,
             "cannot start an xxh3_64 hash");
  std::vector<unsigned char> chunk(std::min<uint64_t>(e.end - e.begin, uint64_t{1} << 20));
  for (uint64_t at = e.begin; at < e.end;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk.size(), e.end - at));
    pread_all(fd_, chunk.data(), n, at, path_);
    XXH3_64bits_update(state.get(), chunk.data(), n);
    at += n;
  }
  check_hash(name, e, XXH3_64bits_digest(state.get()));
}

Shape SafetensorsReader::shape(const std::string& name) const { return entry(name).shape; }

DType SafetensorsReader::dtype(const std::string& name) const { return entry(name).dtype; }

void SafetensorsReader::read_block(const std::string& name, int dim, int64_t begin, int64_t count,
                                   void* dst, int64_t dst_extent, int64_t dst_begin) const {
  const Entry& e = entry(name);
  const Shape& shape = e.shape;
  WEFT_CHECK(dim >= 0 && dim < shape.rank() && begin >= 0 && count >= 0 &&
                 begin + count <= shape[dim] && dst_begin >= 0 && dst_begin + count <= dst_extent,
             "tensor '", name, "' in '", path_, "' (", shape.str(), "): block [", begin, ", ",
             begin + count, ") of dimension ", dim, " into [", dst_begin, ", ", dst_begin + count,
             ") of ", dst_extent, " is out of range");
  if (count == 0) return;
  // The whole tensor into a dense destination is hashed as it lands; a part needs a pass first.
  const bool whole = begin == 0 && count == shape[dim] && dst_begin == 0 && dst_extent == count;
  if (!whole) verify(name);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= shape[d];
  for (int d = dim + 1; d < shape.rank(); ++d) inner *= shape[d];
  const size_t element = dtype_size(e.dtype);
  const size_t run = static_cast<size_t>(count * inner) * element;
  char* out = static_cast<char*>(dst);
  for (int64_t o = 0; o < outer; ++o) {
    const uint64_t from =
        e.begin + static_cast<uint64_t>((o * shape[dim] + begin) * inner) * element;
    pread_all(fd_, out + static_cast<size_t>((o * dst_extent + dst_begin) * inner) * element, run,
              from, path_);
  }
  if (whole && e.has_checksum && !e.verified) {
    check_hash(name, e, XXH3_64bits(dst, static_cast<size_t>(e.end - e.begin)));
  }
}

void SafetensorsReader::read(const std::string& name, TensorView dst, Backend& backend) const {
  const Entry& e = entry(name);
  WEFT_CHECK(dst.dtype == e.dtype && dst.shape == e.shape, "tensor '", name, "' in '", path_,
             "': expected ", dtype_name(dst.dtype), dst.shape.str(), ", found ",
             dtype_name(e.dtype), e.shape.str());
  const size_t bytes = static_cast<size_t>(e.end - e.begin);
  if (bytes == 0) return;
  WEFT_CHECK(dst.data != nullptr, "reading tensor '", name, "' from '", path_,
             "' into a view without data");
  if (dst.device.is_cpu()) {
    pread_all(fd_, dst.data, bytes, e.begin, path_);
    if (e.has_checksum && !e.verified) check_hash(name, e, XXH3_64bits(dst.data, bytes));
    return;
  }
  std::vector<unsigned char> staging(bytes);
  pread_all(fd_, staging.data(), bytes, e.begin, path_);
  if (e.has_checksum && !e.verified) check_hash(name, e, XXH3_64bits(staging.data(), bytes));
  backend.copy(dst, TensorView{staging.data(), e.shape, e.dtype, Device::cpu()});
}

}  // namespace weft
