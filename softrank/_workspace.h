/* Per-call scratch memory of softrank/_cpu.pyx. */
#ifndef SOFTRANK_WORKSPACE_H
#define SOFTRANK_WORKSPACE_H

#include <Python.h>
#include <stdint.h>
#include <vector>
/* Per-call workspace. Up to SOFTRANK_CACHED_WORDS (8 MiB) it is a buffer kept per calling
   thread and reused, so short calls allocate nothing; larger ones are allocated for the call
   (uninitialised: a solve overwrites everything it reads) and freed after it. */
enum { SOFTRANK_CACHED_WORDS = 1 << 20 };
static thread_local std::vector<uint64_t> softrank_cached_words;
struct softrank_workspace_buffer {
    uint64_t *owned;
    softrank_workspace_buffer() : owned(0) {}
    ~softrank_workspace_buffer() { delete[] owned; }
    uint64_t *acquire(size_t words) {
        if (words <= SOFTRANK_CACHED_WORDS) {
            if (softrank_cached_words.size() < words) softrank_cached_words.resize(words);
            return softrank_cached_words.data();
        }
        owned = new uint64_t[words];
        return owned;
    }
};

#endif  /* SOFTRANK_WORKSPACE_H */
