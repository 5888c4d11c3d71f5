#ifndef BACKUP_SIDECAR_COPENSSL_SHIM_H
#define BACKUP_SIDECAR_COPENSSL_SHIM_H

// System OpenSSL 3 plus thin `static inline` wrappers for the parts of its API that are
// macros (Swift cannot import function-like macros) or that need union/stack access.
// No logic lives here.

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/bn.h>
#include <openssl/rand.h>
#include <openssl/ec.h>
#include <openssl/crypto.h>

static inline long bs_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long bs_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_max_proto_version(ctx, version);
}
static inline long bs_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return SSL_CTX_set1_groups_list(ctx, list);
}
static inline long bs_SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *cert) {
    return SSL_CTX_add1_chain_cert(ctx, cert);
}
static inline long bs_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long bs_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
static inline long bs_SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long entries) {
    return SSL_CTX_sess_set_cache_size(ctx, entries);
}
static inline long bs_SSL_CTX_sess_number(SSL_CTX *ctx) {
    return SSL_CTX_sess_number(ctx);
}
static inline long bs_SSL_CTX_set_max_cert_list(SSL_CTX *ctx, long bytes) {
    return SSL_CTX_set_max_cert_list(ctx, bytes);
}
static inline void bs_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes) {
    SSL_CTX_set_read_ahead(ctx, yes);
}
// SSL_OP_* are built with a bit-shift macro Swift cannot import.
static inline uint64_t bs_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t bs_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t bs_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return SSL_OP_CIPHER_SERVER_PREFERENCE; }
static inline uint64_t bs_SSL_OP_NO_TICKET(void) { return SSL_OP_NO_TICKET; }
static inline int bs_SSL_set_app_data(SSL *ssl, void *data) {
    return SSL_set_app_data(ssl, data);
}
static inline void *bs_SSL_get_app_data(const SSL *ssl) {
    return SSL_get_app_data(ssl);
}
static inline void bs_BIO_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}
static inline void bs_BIO_clear_retry_flags(BIO *bio) {
    BIO_clear_retry_flags(bio);
}
static inline void bs_OPENSSL_free(void *ptr) {
    OPENSSL_free(ptr);
}
static inline int bs_sk_X509_num(const STACK_OF(X509) *stack) {
    return sk_X509_num(stack);
}
static inline X509 *bs_sk_X509_value(const STACK_OF(X509) *stack, int index) {
    return sk_X509_value(stack, index);
}

// Subject alternative names: the caller frees the returned stack with bs_general_names_free.
static inline GENERAL_NAMES *bs_x509_subject_alt_names(const X509 *cert) {
    return (GENERAL_NAMES *)X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
}
static inline int bs_general_names_count(const GENERAL_NAMES *names) {
    return sk_GENERAL_NAME_num(names);
}
static inline int bs_general_name_type(const GENERAL_NAMES *names, int index) {
    return sk_GENERAL_NAME_value(names, index)->type;
}
// The raw bytes of a URI entry, or NULL when the entry is not a URI.
static inline const unsigned char *bs_general_name_uri(const GENERAL_NAMES *names, int index, int *length) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, index);
    if (name->type != GEN_URI) { return NULL; }
    *length = ASN1_STRING_length(name->d.uniformResourceIdentifier);
    return ASN1_STRING_get0_data(name->d.uniformResourceIdentifier);
}
static inline void bs_general_names_free(GENERAL_NAMES *names) {
    GENERAL_NAMES_free(names);
}

// Building certificates (the dev agent's CA): stack and context macros.
static inline GENERAL_NAMES *bs_general_names_new(void) { return sk_GENERAL_NAME_new_null(); }
static inline int bs_general_names_push(GENERAL_NAMES *names, GENERAL_NAME *name) {
    return sk_GENERAL_NAME_push(names, name);
}
static inline void bs_X509V3_set_ctx_nodb(X509V3_CTX *ctx) { X509V3_set_ctx_nodb(ctx); }
static inline long bs_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline long bs_BIO_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }

#endif
