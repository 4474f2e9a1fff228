// FastCDC-style chunking with SHA-256 chunk names; see chunker.h.
#include "chunker.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <cstring>

namespace intersync {
namespace {

// The gear table: 256 pseudo-random 64-bit values from a fixed seed, so that
// every build cuts the same file at the same places.
struct GearTable {
  uint64_t v[256];
  GearTable() {
    uint64_t x = 0x696e7465726d657aull;  // "intermez"
    for (auto& g : v) {
      x += 0x9e3779b97f4a7c15ull;  // splitmix64
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      g = z ^ (z >> 31);
    }
  }
};
const GearTable kGear;

// Normalized chunking (FastCDC): a stricter mask before the average size and
// a looser one after it narrows the spread of chunk sizes around 64 KiB.
constexpr uint64_t kMaskStrict = 0x924a494929250000ull;  // 18 bits set
constexpr uint64_t kMaskLoose = 0x8891122444890000ull;   // 14 bits set

constexpr char kHex[] = "0123456789abcdef";

}  // namespace

struct Chunker::Sha {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Sha() { EVP_MD_CTX_free(ctx); }
  void reset() { EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr); }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx, p, n); }
  Hash final() {
    Hash h;
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, h.data(), &len);
    return h;
  }
};

std::string hash_hex(const Hash& h) {
  std::string s(64, '0');
  for (size_t i = 0; i < h.size(); ++i) {
    s[2 * i] = kHex[h[i] >> 4];
    s[2 * i + 1] = kHex[h[i] & 15];
  }
  return s;
}

bool hash_from_hex(std::string_view hex, Hash* out) {
  if (hex.size() != 64) return false;
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < 32; ++i) {
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

Hash sha256(std::string_view data) {
  Hash h;
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), h.data(), &len, EVP_sha256(), nullptr);
  return h;
}

Chunker::Chunker() : sha_(new Sha) {
  sha_->reset();
}
Chunker::~Chunker() {
  delete sha_;
}

void Chunker::cut() {
  manifest_.chunks.push_back(ChunkRef{sha_->final(), chunk_len_});
  sha_->reset();
  chunk_len_ = 0;
  fingerprint_ = 0;
}

namespace {

// Rolls the gear fingerprint over up to `n` bytes and stops just past the
// first one whose fingerprint has no bit of `Mask` set; returns how many
// bytes it consumed and whether it stopped at such a cut point. The mask is
// a constant and the loop has one branch, so it runs at about a byte a cycle.
template <uint64_t Mask>
size_t roll_to_cut(const uint8_t* p, size_t n, uint64_t& fingerprint, bool& cut) {
  uint64_t f = fingerprint;
  for (size_t k = 0; k < n; ++k) {
    f = (f << 1) + kGear.v[p[k]];
    if ((f & Mask) == 0) {
      fingerprint = f;
      cut = true;
      return k + 1;
    }
  }
  fingerprint = f;
  return n;
}

}  // namespace

void Chunker::feed(const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  manifest_.size += size;
  while (size > 0) {
    // Bytes below the minimum size never end a chunk: hash them in one go.
    size_t i = 0;
    if (chunk_len_ < kChunkMin) {
      i = std::min<size_t>(size, kChunkMin - chunk_len_);
      chunk_len_ += static_cast<uint32_t>(i);
    }
    // A byte that makes the chunk L bytes long ends it when the fingerprint
    // clears the strict mask (L < average), the loose one (L < maximum), or
    // when L reaches the maximum.
    bool boundary = false;
    if (i < size && chunk_len_ < kChunkAvg - 1) {
      size_t n = roll_to_cut<kMaskStrict>(
          p + i, std::min<size_t>(size - i, kChunkAvg - 1 - chunk_len_), fingerprint_, boundary);
      i += n;
      chunk_len_ += static_cast<uint32_t>(n);
    }
    if (!boundary && i < size && chunk_len_ < kChunkMax - 1) {
      size_t n = roll_to_cut<kMaskLoose>(
          p + i, std::min<size_t>(size - i, kChunkMax - 1 - chunk_len_), fingerprint_, boundary);
      i += n;
      chunk_len_ += static_cast<uint32_t>(n);
    }
    if (!boundary && i < size && chunk_len_ == kChunkMax - 1) {
      ++i;
      ++chunk_len_;
      boundary = true;
    }
    sha_->update(p, i);
    if (boundary) cut();
    p += i;
    size -= i;
  }
}

Hash content_id_of(const std::vector<ChunkRef>& chunks) {
  if (chunks.size() == 1) return chunks[0].hash;
  std::string cat;
  cat.reserve(chunks.size() * 32);
  for (const auto& c : chunks) cat.append(reinterpret_cast<const char*>(c.hash.data()), 32);
  return sha256(cat);
}

Manifest Chunker::finish() {
  if (chunk_len_ > 0) cut();
  manifest_.content_id = content_id_of(manifest_.chunks);
  Manifest out = std::move(manifest_);
  manifest_ = Manifest{};
  sha_->reset();
  return out;
}

Manifest manifest_of(std::string_view data) {
  Chunker c;
  c.feed(data.data(), data.size());
  return c.finish();
}

Result<Manifest> manifest_of_fd(int fd) {
  Chunker c;
  std::string buf(1 << 20, '\0');
  off_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, buf.data(), buf.size(), off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_error(std::string("read failed: ") + strerror(errno));
    }
    if (n == 0) break;
    c.feed(buf.data(), static_cast<size_t>(n));
    off += n;
  }
  return c.finish();
}

std::string pack_chunks(const std::vector<ChunkRef>& chunks) {
  std::string out;
  out.reserve(chunks.size() * 36);
  for (const auto& c : chunks) {
    out.append(reinterpret_cast<const char*>(c.hash.data()), 32);
    uint8_t le[4] = {uint8_t(c.length), uint8_t(c.length >> 8), uint8_t(c.length >> 16),
                     uint8_t(c.length >> 24)};
    out.append(reinterpret_cast<const char*>(le), 4);
  }
  return out;
}

bool unpack_chunks(std::string_view packed, std::vector<ChunkRef>* out) {
  if (packed.size() % 36 != 0) return false;
  out->clear();
  for (size_t i = 0; i < packed.size(); i += 36) {
    ChunkRef c;
    std::memcpy(c.hash.data(), packed.data() + i, 32);
    const auto* l = reinterpret_cast<const uint8_t*>(packed.data() + i + 32);
    c.length = uint32_t(l[0]) | uint32_t(l[1]) << 8 | uint32_t(l[2]) << 16 | uint32_t(l[3]) << 24;
    out->push_back(c);
  }
  return true;
}

}  // namespace intersync
