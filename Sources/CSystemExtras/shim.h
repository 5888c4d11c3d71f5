#ifndef BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
#define BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
// libc pieces Swift's Glibc module does not export: malloc tuning, the SO_PEERCRED
// credentials struct (glibc only declares `struct ucred` under _GNU_SOURCE), thread names.
#include <malloc.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/prctl.h>

/// Same layout as Linux's `struct ucred` (see socket(7)).
struct bs_peer_credentials {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

static inline int bs_so_peercred(void) { return SO_PEERCRED; }

/// Names the calling thread (the kernel keeps the first 15 bytes); prctl is variadic.
static inline int bs_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }
#endif
