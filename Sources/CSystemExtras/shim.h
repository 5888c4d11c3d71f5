#ifndef BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
#define BACKUP_SIDECAR_CSYSTEMEXTRAS_SHIM_H
// libc pieces Swift's Glibc module does not export: malloc tuning, and the SO_PEERCRED
// credentials struct (glibc only declares `struct ucred` under _GNU_SOURCE).
#include <malloc.h>
#include <sys/types.h>
#include <sys/socket.h>

/// Same layout as Linux's `struct ucred` (see socket(7)).
struct bs_peer_credentials {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

static inline int bs_so_peercred(void) { return SO_PEERCRED; }
#endif
