/*
 * An example numaproc procedure library in C.
 *
 *   cc -shared -fPIC -O2 -I ../../procs/abi/include -o libnumaproc_example_c.so numaproc_example_c.c
 *
 * Procedures:
 *   c.crc32      CRC-32 (IEEE) of the input, 4 bytes little-endian
 *   c.wordcount  number of whitespace-separated words, 8 bytes little-endian
 *   c.sum        the sum of the input read as little-endian u64 words (error
 *                22 when its length is not a multiple of 8), 8 bytes
 *                little-endian: what example.sum of the Rust example does
 *   c.upper      the input with ASCII letters upper-cased
 */
#include <stdio.h>
#include <string.h>

#include "numaproc.h"

static const numaproc_host *g_host;

static uint32_t fail(numaproc_call *call, uint32_t code, const char *msg) {
    size_t n = strlen(msg);
    if (n > call->error_capacity) n = (size_t)call->error_capacity;
    memcpy(call->error, msg, n);
    call->error_len = n;
    call->error_code = code;
    return NUMAPROC_STATUS_ERROR;
}

static uint32_t put(numaproc_call *call, const void *data, uint64_t len) {
    if (len > call->output_capacity) {
        call->output_len = len;
        return NUMAPROC_STATUS_OUTPUT_TOO_LARGE;
    }
    memcpy(call->output, data, (size_t)len);
    call->output_len = len;
    return NUMAPROC_STATUS_OK;
}

static uint32_t crc32_proc(numaproc_call *call) {
    uint32_t crc = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < call->input_len; i++) {
        crc ^= call->input[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    crc ^= 0xFFFFFFFFu;
    uint8_t out[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    return put(call, out, 4);
}

static uint32_t wordcount_proc(numaproc_call *call) {
    uint64_t words = 0;
    int in_word = 0;
    for (uint64_t i = 0; i < call->input_len; i++) {
        uint8_t c = call->input[i];
        int space = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
        if (!space && !in_word) words++;
        in_word = !space;
    }
    uint8_t out[8];
    for (int k = 0; k < 8; k++) out[k] = (uint8_t)(words >> (8 * k));
    return put(call, out, 8);
}

/* The little-endian u64 at p (one load where the host is little-endian;
 * applied to a host-order value, it gives its little-endian bytes). */
static uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint32_t sum_proc(numaproc_call *call) {
    if (call->input_len % 8 != 0) {
        return fail(call, 22, "input is not a whole number of u64 words");
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < call->input_len; i += 8) total += le64(call->input + i);
    total = le64((const uint8_t *)&total); /* back to little-endian bytes */
    return put(call, &total, 8);
}

static uint32_t upper_proc(numaproc_call *call) {
    if (call->input_len > call->output_capacity) {
        call->output_len = call->input_len;
        return NUMAPROC_STATUS_OUTPUT_TOO_LARGE;
    }
    for (uint64_t i = 0; i < call->input_len; i++) {
        uint8_t c = call->input[i];
        call->output[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
    }
    call->output_len = call->input_len;
    if (call->input_len > 0 && call->input[0] == 0) {
        return fail(call, 7, "input starts with a NUL byte");
    }
    return NUMAPROC_STATUS_OK;
}

static int32_t init(const numaproc_host *host, char *error, size_t error_capacity) {
    (void)error;
    (void)error_capacity;
    g_host = host;
    char msg[96];
    int n = snprintf(msg, sizeof msg, "C example library ready on SOC %u", host->soc);
    if (n > 0) host->log(host, NUMAPROC_LOG_INFO, msg, (size_t)n);
    return 0;
}

static const numaproc_procedure procedures[] = {
    {"c.crc32", crc32_proc, 0, 0},
    {"c.wordcount", wordcount_proc, 0, 0},
    {"c.sum", sum_proc, 0, 0},
    {"c.upper", upper_proc, 0, 0},
};

static const numaproc_library library = {
    NUMAPROC_LIBRARY_HEADER,
    "numaproc_example_c",
    "1.0.0",
    procedures,
    sizeof procedures / sizeof procedures[0],
    0,
    init,
    NULL,
};

const numaproc_library *numaproc_library_v1(void) { return &library; }
