#include "re2_shim.h"

#include <re2/re2.h>
#include <cstring>
#include <string>

struct sidecar_re2 {
    re2::RE2 regex;
    sidecar_re2(const re2::StringPiece &pattern, const re2::RE2::Options &options) : regex(pattern, options) {}
};

static void write_error(const std::string &message, char *error, size_t capacity) {
    if (error == nullptr || capacity == 0) return;
    size_t length = message.size() < capacity - 1 ? message.size() : capacity - 1;
    std::memcpy(error, message.data(), length);
    error[length] = '\0';
}

extern "C" sidecar_re2 *sidecar_re2_compile(const char *pattern, size_t length, int max_program_size,
                                            char *error, size_t error_capacity) {
    re2::RE2::Options options;
    options.set_log_errors(false);
    options.set_encoding(re2::RE2::Options::EncodingUTF8);
    auto *compiled = new sidecar_re2(re2::StringPiece(pattern, length), options);
    if (!compiled->regex.ok()) {
        write_error(compiled->regex.error(), error, error_capacity);
        delete compiled;
        return nullptr;
    }
    if (compiled->regex.ProgramSize() > max_program_size) {
        write_error("program size " + std::to_string(compiled->regex.ProgramSize()) + " is over the limit of " +
                    std::to_string(max_program_size), error, error_capacity);
        delete compiled;
        return nullptr;
    }
    return compiled;
}

extern "C" int sidecar_re2_full_match(const sidecar_re2 *regex, const char *text, size_t length) {
    return re2::RE2::FullMatch(re2::StringPiece(text, length), regex->regex) ? 1 : 0;
}

extern "C" void sidecar_re2_free(sidecar_re2 *regex) { delete regex; }
