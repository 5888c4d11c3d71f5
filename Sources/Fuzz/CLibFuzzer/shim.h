// libFuzzer's driver (compiler-rt, LLVM 11+). Declared here because SwiftPM links executables
// with `main` aliased to the module's own entry point, so libFuzzer's `main` never runs and the
// fuzz targets start the driver themselves. Only referenced in -DFUZZING builds.
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
