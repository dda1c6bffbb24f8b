/*
 * numaproc.h — the C ABI of numaproc procedure libraries (ABI 1.0).
 *
 * A procedure library is a shared object exporting one function,
 *
 *     const numaproc_library *numaproc_library_v1(void);
 *
 * returning a pointer to a static descriptor. Each SOC of the engine loads
 * its own copy and checks the descriptor (magic, ABI major and minor, the
 * sizes of the structures below) before calling anything else in it.
 *
 * This header matches the Rust crate numaproc-abi (procs/abi/src/lib.rs);
 * a test compiles it and compares every size and offset.
 */
#ifndef NUMAPROC_H
#define NUMAPROC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "NPLIBRY\0" read as a little-endian 64-bit word. */
#define NUMAPROC_LIBRARY_MAGIC 0x00595242494C504EULL
#define NUMAPROC_ABI_MAJOR 1
#define NUMAPROC_ABI_MINOR 0

/* Procedure return values. */
#define NUMAPROC_STATUS_OK 0u               /* output_len bytes of output are valid */
#define NUMAPROC_STATUS_ERROR 1u            /* error_code and the message say why */
#define NUMAPROC_STATUS_OUTPUT_TOO_LARGE 2u /* output_len holds the size needed */
#define NUMAPROC_STATUS_PANICKED 4u         /* an exception or panic was caught */

/* Log levels. */
#define NUMAPROC_LOG_ERROR 1u
#define NUMAPROC_LOG_WARN 2u
#define NUMAPROC_LOG_INFO 3u
#define NUMAPROC_LOG_DEBUG 4u

typedef struct numaproc_host numaproc_host;

/* One call. Write at most output_capacity bytes into output and set
 * output_len; on error set error_code and write at most error_capacity
 * bytes of message (no NUL needed) into error, setting error_len. */
typedef struct numaproc_call {
    uint32_t struct_size;
    uint32_t soc;
    uint32_t node;
    uint32_t worker;
    const uint8_t *input;
    uint64_t input_len;
    uint8_t *output;
    uint64_t output_capacity;
    uint64_t output_len;
    char *error;
    uint64_t error_capacity;
    uint64_t error_len;
    uint32_t error_code;
    uint32_t reserved;
    const numaproc_host *host;
} numaproc_call;

typedef uint32_t (*numaproc_proc_fn)(numaproc_call *call);

/* Services of the host, for init/deinit and procedures. */
struct numaproc_host {
    uint32_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t soc;
    uint32_t node;
    uint32_t workers;
    /* Writes a message (len bytes, no NUL needed) into the engine's log. */
    void (*log)(const numaproc_host *host, uint32_t level, const char *msg, size_t len);
    /* Non-zero when the caller gave up on the call. */
    int32_t (*is_cancelled)(const numaproc_call *call);
    const void *host_data;
};

/* Returns 0 on success; otherwise writes a NUL-terminated reason (at most
 * error_capacity bytes) and the engine refuses the library. */
typedef int32_t (*numaproc_init_fn)(const numaproc_host *host, char *error, size_t error_capacity);
typedef void (*numaproc_deinit_fn)(const numaproc_host *host);

typedef struct numaproc_procedure {
    const char *name; /* 1 to 63 bytes of [A-Za-z0-9_.:-], not "sys_*" */
    numaproc_proc_fn func;
    uint32_t flags;    /* zero */
    uint32_t reserved; /* zero */
} numaproc_procedure;

typedef struct numaproc_library {
    uint64_t magic;      /* NUMAPROC_LIBRARY_MAGIC */
    uint32_t abi_major;  /* NUMAPROC_ABI_MAJOR */
    uint32_t abi_minor;  /* NUMAPROC_ABI_MINOR */
    uint32_t descriptor_size; /* sizeof(numaproc_library) */
    uint32_t procedure_size;  /* sizeof(numaproc_procedure) */
    uint32_t call_size;       /* sizeof(numaproc_call) */
    uint32_t host_size;       /* sizeof(numaproc_host) */
    const char *name;
    const char *version;
    const numaproc_procedure *procedures;
    uint32_t procedure_count;
    uint32_t reserved;
    numaproc_init_fn init;     /* optional: NULL */
    numaproc_deinit_fn deinit; /* optional: NULL */
} numaproc_library;

/* Fills the header fields of a descriptor. */
#define NUMAPROC_LIBRARY_HEADER                                                   \
    NUMAPROC_LIBRARY_MAGIC, NUMAPROC_ABI_MAJOR, NUMAPROC_ABI_MINOR,               \
        sizeof(numaproc_library), sizeof(numaproc_procedure), sizeof(numaproc_call), \
        sizeof(numaproc_host)

#ifdef __cplusplus
}
#endif

#endif /* NUMAPROC_H */
