/* span.h: a pointer and a length, bounds-checked in debug builds.

   The solver indexes rows through spans rather than Cython memoryviews: a memoryview slice
   per row costs reference counting (atomic inside a parallel loop). Debug builds
   (SOFTRANK_CYTHON_DEBUG=1 defines SOFTRANK_BOUNDS_CHECK) check every index and abort on an
   out-of-bounds one, so that a test fails loudly instead of passing on corrupted memory.
   Kernels that take raw pointers (the sorting network, the vector exp) are not covered. */
#ifndef SOFTRANK_SPAN_H
#define SOFTRANK_SPAN_H

#include <Python.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef SOFTRANK_BOUNDS_CHECK
static void softrank_out_of_bounds(Py_ssize_t i, Py_ssize_t n) {
    fprintf(stderr, "softrank: index %zd out of bounds for a span of %zd\n", i, n);
    fflush(stderr);
    abort();
}
#define SOFTRANK_CHECK(cond, i, n) do { if (!(cond)) softrank_out_of_bounds((i), (n)); } while (0)
static const int softrank_bounds_checked = 1;
#else
#define SOFTRANK_CHECK(cond, i, n) ((void)0)
static const int softrank_bounds_checked = 0;
#endif

template <typename T>
struct softrank_span {
    T *ptr;
    Py_ssize_t len;
    softrank_span() : ptr(0), len(0) {}
    softrank_span(T *p, Py_ssize_t n) : ptr(p), len(n) {}
    /* A span of U converts to a span of const U. */
    template <typename U>
    softrank_span(const softrank_span<U> &other) : ptr(other.ptr), len(other.len) {}
    inline T &operator[](Py_ssize_t i) const {
        SOFTRANK_CHECK(0 <= i && i < len, i, len);
        return ptr[i];
    }
    /* Elements [start, start + n). */
    inline softrank_span sub(Py_ssize_t start, Py_ssize_t n) const {
        SOFTRANK_CHECK(0 <= start && 0 <= n && start + n <= len, start + n, len);
        return softrank_span(ptr + start, n);
    }
};

#endif  /* SOFTRANK_SPAN_H */
