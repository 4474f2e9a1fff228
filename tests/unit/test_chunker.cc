// Tests of content-defined chunking and content ids: chunks are
// deterministic, within the size bounds, independent of how the bytes are
// fed, name their own bytes by SHA-256, and an insertion changes only the
// chunks around it (the point of CDC). Also the hex and pack helpers and
// hashing through a file descriptor.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "chunker.h"

namespace {

namespace fs = std::filesystem;
using intersync::ChunkRef;
using intersync::Hash;
using intersync::kChunkMax;
using intersync::kChunkMin;
using intersync::Manifest;
using intersync::manifest_of;
using intersync::sha256;

constexpr const char* kSha256Empty =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr const char* kSha256Abc =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t k = 0; k < 8 && i + k < n; ++k) s[i + k] = static_cast<char>(v >> (8 * k));
  }
  return s;
}

bool same_chunks(const std::vector<ChunkRef>& a, const std::vector<ChunkRef>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].hash != b[i].hash || a[i].length != b[i].length) return false;
  }
  return true;
}

void check_same_manifest(const Manifest& a, const Manifest& b) {
  CHECK(a.size == b.size);
  CHECK(a.chunks.size() == b.chunks.size());
  CHECK(same_chunks(a.chunks, b.chunks));
  CHECK(a.content_id == b.content_id);
}

// Every chunk but the last lies in [kChunkMin, kChunkMax], the last in
// (0, kChunkMax]; the lengths add up to the size and each hash is the
// SHA-256 of exactly its bytes.
void check_well_formed(const Manifest& m, const std::string& data) {
  REQUIRE(m.size == data.size());
  uint64_t off = 0;
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const ChunkRef& c = m.chunks[i];
    INFO("chunk " << i << " of " << m.chunks.size() << ", length " << c.length);
    CHECK(c.length > 0);
    CHECK(c.length <= kChunkMax);
    if (i + 1 < m.chunks.size()) CHECK(c.length >= kChunkMin);
    REQUIRE(off + c.length <= data.size());
    CHECK(c.hash == sha256(std::string_view(data).substr(off, c.length)));
    off += c.length;
  }
  CHECK(off == data.size());
  CHECK(m.content_id == intersync::content_id_of(m.chunks));
}

// A temporary file holding `data`, removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& data) {
    path_ = (fs::temp_directory_path() / "test_chunker.XXXXXX").string();
    fd_ = mkstemp(path_.data());
    REQUIRE(fd_ >= 0);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = write(fd_, data.data() + done, data.size() - done);
      REQUIRE(n > 0);
      done += static_cast<size_t>(n);
    }
  }
  ~TempFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  int fd() const { return fd_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace

TEST_CASE("sha256 and hash_hex match the standard test vectors") {
  CHECK(intersync::hash_hex(sha256("")) == kSha256Empty);
  CHECK(intersync::hash_hex(sha256("abc")) == kSha256Abc);
}

TEST_CASE("hash_from_hex parses both cases and refuses bad input") {
  Hash h{};
  REQUIRE(intersync::hash_from_hex(kSha256Abc, &h));
  CHECK(h == sha256("abc"));
  std::string upper = kSha256Abc;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  Hash u{};
  REQUIRE(intersync::hash_from_hex(upper, &u));
  CHECK(u == h);

  const Hash r = sha256("round trip");
  Hash back{};
  REQUIRE(intersync::hash_from_hex(intersync::hash_hex(r), &back));
  CHECK(back == r);

  const std::string good = kSha256Abc;
  Hash out{};
  CHECK_FALSE(intersync::hash_from_hex("", &out));
  CHECK_FALSE(intersync::hash_from_hex(good.substr(0, 63), &out));
  CHECK_FALSE(intersync::hash_from_hex(good + "0", &out));
  CHECK_FALSE(intersync::hash_from_hex(good.substr(0, 62), &out));
  for (char bad : {'g', 'G', ' ', '-', 'x', '\0', '/', ':', '@', '`'}) {
    std::string s = good;
    s[17] = bad;
    INFO("bad char code " << int(bad));
    CHECK_FALSE(intersync::hash_from_hex(s, &out));
  }
  std::string last_bad = good;
  last_bad[63] = 'z';
  CHECK_FALSE(intersync::hash_from_hex(last_bad, &out));
}

TEST_CASE("empty input has no chunks and the content id of empty bytes") {
  Manifest m = manifest_of("");
  CHECK(m.chunks.empty());
  CHECK(m.size == 0);
  CHECK(intersync::hash_hex(m.content_id) == kSha256Empty);

  intersync::Chunker c;
  c.feed(nullptr, 0);
  Manifest m2 = c.finish();
  CHECK(m2.chunks.empty());
  CHECK(m2.content_id == sha256(""));
}

TEST_CASE("a single-chunk file's content id is the SHA-256 of its bytes") {
  for (size_t n : {size_t{1}, size_t{3}, size_t{1000}, size_t{kChunkMin}, size_t{kChunkMin + 1}}) {
    INFO("size " << n);
    const std::string data = n == 3 ? std::string("abc") : random_bytes(n, n);
    Manifest m = manifest_of(data);
    REQUIRE(m.chunks.size() == 1);
    CHECK(m.chunks[0].length == n);
    CHECK(m.content_id == sha256(data));
    CHECK(m.chunks[0].hash == sha256(data));
  }
  CHECK(intersync::hash_hex(manifest_of("abc").content_id) == kSha256Abc);
}

TEST_CASE("a multi-chunk content id is the SHA-256 of the chunk hashes end to end") {
  const std::string data = random_bytes(1 << 20, 7);
  Manifest m = manifest_of(data);
  REQUIRE(m.chunks.size() > 1);
  std::string cat;
  for (const auto& c : m.chunks) cat.append(reinterpret_cast<const char*>(c.hash.data()), 32);
  CHECK(m.content_id == sha256(cat));
  CHECK(m.content_id != sha256(data));
}

TEST_CASE("chunking is deterministic and chunk sizes stay within bounds") {
  const std::string data = random_bytes(4 << 20, 42);
  Manifest a = manifest_of(data);
  Manifest b = manifest_of(data);
  check_same_manifest(a, b);
  check_well_formed(a, data);
  // 4 MiB at a 64 KiB average: many chunks, not one per maximum size.
  CHECK(a.chunks.size() >= 16);
  CHECK(a.chunks.size() <= 256);

  // Another random buffer cuts differently but equally well.
  const std::string other = random_bytes(3 << 20, 43);
  check_well_formed(manifest_of(other), other);
}

TEST_CASE("chunk boundaries do not change between versions") {
  // Content ids of large files name their chunks, so the cut points are
  // part of the format: a server and a client of different versions must
  // cut the same bytes at the same places. Recorded before the rolling loop
  // was rewritten for speed.
  const std::string data = random_bytes(2 << 20, 7);
  const std::vector<uint32_t> want = {80147,  81940, 76826, 66744,  77017, 69078, 63033, 68161,
                                      126479, 85483, 89444, 116496, 75733, 77232, 88847, 76671,
                                      66538,  82782, 65799, 81120,  65975, 81334, 66231, 73937,
                                      76174,  23644, 61057, 31205,  2025};
  Manifest m = manifest_of(data);
  std::vector<uint32_t> got;
  for (const auto& c : m.chunks) got.push_back(c.length);
  CHECK(got == want);
  CHECK(intersync::hash_hex(m.content_id) ==
        "beeec705bf8c35fb7dd680fc6497c1a4da359283aeca2e5c5e99ca633fc11d3a");
}

TEST_CASE("input without natural cut points is cut at the maximum size") {
  const std::string zeros(1 << 20, '\0');
  Manifest m = manifest_of(zeros);
  check_well_formed(m, zeros);
  CHECK(m.chunks.size() >= 4);  // never longer than 256 KiB

  const std::string ones(1 << 20, '\xff');
  check_well_formed(manifest_of(ones), ones);
}

TEST_CASE("feeding in odd pieces gives the same manifest as one feed") {
  const std::string data = random_bytes((4 << 20) + 12345, 99);
  const Manifest whole = manifest_of(data);

  const std::vector<size_t> pieces = {1, 7,   100 * 1024, 3, 65536,     16383, 16385,  262145, 1,
                                      1, 999, kChunkMin,  2, kChunkMax, 5000,  131071, 13};
  intersync::Chunker c;
  size_t off = 0;
  for (size_t i = 0; off < data.size(); ++i) {
    size_t n = std::min(pieces[i % pieces.size()], data.size() - off);
    c.feed(data.data() + off, n);
    off += n;
  }
  check_same_manifest(c.finish(), whole);

  // Byte by byte over a smaller buffer.
  const std::string small = random_bytes(300 * 1024, 5);
  intersync::Chunker bytes;
  for (char ch : small) bytes.feed(&ch, 1);
  check_same_manifest(bytes.finish(), manifest_of(small));
}

TEST_CASE("a Chunker can be reused after finish()") {
  const std::string data = random_bytes(700 * 1024, 11);
  intersync::Chunker c;
  c.feed(data.data(), data.size() / 3);  // stop mid-chunk
  (void)c.finish();
  c.feed(data.data(), data.size());
  check_same_manifest(c.finish(), manifest_of(data));
}

TEST_CASE("inserting 10 bytes in the middle changes only the chunks around it") {
  const std::string data = random_bytes(4 << 20, 2024);
  std::string edited = data;
  edited.insert(data.size() / 2, "0123456789");

  const Manifest before = manifest_of(data);
  const Manifest after = manifest_of(edited);
  check_well_formed(after, edited);
  REQUIRE(before.chunks.size() >= 16);
  CHECK(before.content_id != after.content_id);

  std::set<Hash> old_hashes;
  for (const auto& c : before.chunks) old_hashes.insert(c.hash);
  size_t shared = 0;
  for (const auto& c : after.chunks) shared += old_hashes.count(c.hash);
  const size_t changed = after.chunks.size() - shared;
  INFO(before.chunks.size() << " chunks before, " << after.chunks.size() << " after, " << shared
                            << " shared");
  CHECK(changed >= 1);
  CHECK(changed <= 3);
  CHECK(shared + 3 >= before.chunks.size());

  // The same holds for an insertion at the very start.
  std::string front = "0123456789" + data;
  const Manifest f = manifest_of(front);
  size_t shared_front = 0;
  for (const auto& c : f.chunks) shared_front += old_hashes.count(c.hash);
  CHECK(shared_front + 3 >= before.chunks.size());
}

TEST_CASE("pack_chunks and unpack_chunks round-trip") {
  std::vector<ChunkRef> chunks = {
      {sha256("a"), 1}, {sha256("b"), 0x01020304u}, {sha256("c"), kChunkMax}, {sha256("d"), 0}};
  chunks[3].length = 0xffffffffu;
  const std::string packed = intersync::pack_chunks(chunks);
  REQUIRE(packed.size() == 36 * chunks.size());
  // 32-byte hash, then the length little-endian.
  CHECK(packed.compare(36, 32, reinterpret_cast<const char*>(chunks[1].hash.data()), 32) == 0);
  CHECK(static_cast<uint8_t>(packed[36 + 32]) == 0x04);
  CHECK(static_cast<uint8_t>(packed[36 + 33]) == 0x03);
  CHECK(static_cast<uint8_t>(packed[36 + 34]) == 0x02);
  CHECK(static_cast<uint8_t>(packed[36 + 35]) == 0x01);

  std::vector<ChunkRef> back = {{sha256("stale"), 9}};  // replaced, not appended to
  REQUIRE(intersync::unpack_chunks(packed, &back));
  CHECK(same_chunks(back, chunks));

  // A real manifest too.
  const Manifest m = manifest_of(random_bytes(1 << 20, 3));
  std::vector<ChunkRef> mc;
  REQUIRE(intersync::unpack_chunks(intersync::pack_chunks(m.chunks), &mc));
  CHECK(same_chunks(mc, m.chunks));

  std::vector<ChunkRef> none = {{sha256("x"), 1}};
  CHECK(intersync::pack_chunks({}).empty());
  REQUIRE(intersync::unpack_chunks("", &none));
  CHECK(none.empty());

  std::vector<ChunkRef> out;
  CHECK_FALSE(intersync::unpack_chunks(packed.substr(0, 35), &out));
  CHECK_FALSE(intersync::unpack_chunks(packed.substr(0, 37), &out));
  CHECK_FALSE(intersync::unpack_chunks(packed + "x", &out));
}

TEST_CASE("manifest_of_fd equals manifest_of on the same bytes") {
  // Larger than the 1 MiB read buffer and not a multiple of it.
  for (size_t n : {size_t{0}, size_t{100}, size_t{(3 << 20) + 4567}}) {
    INFO("size " << n);
    const std::string data = random_bytes(n, n + 1);
    TempFile f(data);
    // The file offset is at the end after writing: hashing starts at 0 anyway.
    auto m = intersync::manifest_of_fd(f.fd());
    REQUIRE(m.ok());
    check_same_manifest(*m, manifest_of(data));
  }

  auto bad = intersync::manifest_of_fd(-1);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == -EBADF);
}
