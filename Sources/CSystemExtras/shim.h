#ifndef BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
#define BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
// libc headers Swift's Glibc module does not export (malloc tuning).
#include <malloc.h>
#endif
