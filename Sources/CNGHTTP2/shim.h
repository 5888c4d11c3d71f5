#ifndef BACKUP_SIDECAR_CNGHTTP2_SHIM_H
#define BACKUP_SIDECAR_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#endif
