// derive_seed: names to independent Philox keys.
#include "weft/rng.hpp"

namespace weft {

uint64_t derive_seed(uint64_t seed, const char* name) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a offset basis
  for (const char* p = name; *p != '\0'; ++p) {
    hash ^= static_cast<unsigned char>(*p);
    hash *= 0x100000001b3ull;
  }
  // splitmix64 finalizer: neighbouring seeds give unrelated keys.
  uint64_t z = hash ^ (seed + 0x9e3779b97f4a7c15ull + (hash << 6) + (hash >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace weft
