// A C face for RE2 (system libre2), so Swift can use it without C++ interop: compile a
// pattern, full-match a string, free. RE2 runs in time linear in the input, never backtracks.
#ifndef SIDECAR_RE2_SHIM_H
#define SIDECAR_RE2_SHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sidecar_re2 sidecar_re2;

/// Compiles `pattern` (RE2 syntax, UTF-8). Returns NULL and writes a message into `error`
/// (NUL-terminated, truncated to `error_capacity`) when the pattern is invalid or its program
/// is larger than `max_program_size`.
sidecar_re2 *sidecar_re2_compile(const char *pattern, size_t length, int max_program_size,
                                 char *error, size_t error_capacity);

/// 1 when the whole of `text` matches, 0 otherwise. Safe to call from several threads at once.
int sidecar_re2_full_match(const sidecar_re2 *regex, const char *text, size_t length);

void sidecar_re2_free(sidecar_re2 *regex);

#ifdef __cplusplus
}
#endif

#endif
