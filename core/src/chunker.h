// Content-defined chunking and content ids. A file is cut into chunks at
// positions chosen by a rolling gear hash (FastCDC-style: 16 KiB minimum,
// 64 KiB average, 256 KiB maximum), so an insertion changes only the chunks
// around it and only changed chunks need to travel. Each chunk is named by
// its SHA-256; a file's content id is the SHA-256 of its chunk hashes laid
// end to end, or the single chunk's hash when there is exactly one (so a
// small file's content id is the hash of its bytes).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "intersync/result.h"

namespace intersync {

using Hash = std::array<uint8_t, 32>;

std::string hash_hex(const Hash& h);
bool hash_from_hex(std::string_view hex, Hash* out);
Hash sha256(std::string_view data);

struct ChunkRef {
  Hash hash;
  uint32_t length = 0;
};

struct Manifest {
  std::vector<ChunkRef> chunks;
  uint64_t size = 0;
  Hash content_id{};
};

inline constexpr uint32_t kChunkMin = 16 * 1024;
inline constexpr uint32_t kChunkAvg = 64 * 1024;
inline constexpr uint32_t kChunkMax = 256 * 1024;

// Streaming chunker: feed bytes in any pieces; finish() closes the last
// chunk and computes the content id.
class Chunker {
 public:
  Chunker();
  ~Chunker();
  Chunker(const Chunker&) = delete;
  Chunker& operator=(const Chunker&) = delete;

  void feed(const void* data, size_t size);
  Manifest finish();

 private:
  void cut();
  struct Sha;
  Sha* sha_;
  uint64_t fingerprint_ = 0;
  uint32_t chunk_len_ = 0;
  Manifest manifest_;
};

Hash content_id_of(const std::vector<ChunkRef>& chunks);
Manifest manifest_of(std::string_view data);

// Hashes the regular file open at `fd` from its start (blocking; for the
// thread pool or for small files).
Result<Manifest> manifest_of_fd(int fd);

// Packs a chunk list as 36-byte entries (32-byte hash, u32 LE length) for
// the index and the wire, and back.
std::string pack_chunks(const std::vector<ChunkRef>& chunks);
bool unpack_chunks(std::string_view packed, std::vector<ChunkRef>* out);

}  // namespace intersync
