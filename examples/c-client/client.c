/*
 * A client of a numaproc server in C: a call, a zero-copy call, a buffer
 * too small, a procedure's error and a missing procedure. Exits 1 on
 * anything unexpected.
 *
 *     cargo build --release -p numaproc-client-c   # target/release/libnumaproc_client.so
 *     make                                          # or the cc line in the Makefile
 *     numaproc serve --name demo &
 *     ./client demo [RUNTIME_DIR]
 */
#include <stdio.h>
#include <string.h>

#include "numaproc_client.h"

static int fail(const char *what, const numaproc_client_error *err) {
    fprintf(stderr, "client: %s: %s: %s\n", what, numaproc_client_status_str(err->status),
            err->message);
    return 1;
}

/* The zero-copy path: the input is written into the worker's buffer, the
 * output read where the worker wrote it. */
static int zero_copy(numaproc_client *c, numaproc_client_error *err) {
    numaproc_claim *claim =
        numaproc_client_claim(c, NUMAPROC_CLIENT_ANY, NUMAPROC_CLIENT_ANY, 5000, err);
    if (!claim)
        return fail("claim", err);
    size_t capacity;
    char *in = numaproc_client_claim_input(claim, &capacity);
    const char *text = "written in place";
    if (strlen(text) > capacity) {
        numaproc_client_release(claim);
        fprintf(stderr, "client: an input buffer of %zu bytes\n", capacity);
        return 1;
    }
    memcpy(in, text, strlen(text));
    const void *out;
    size_t out_len;
    int rc = 0;
    if (numaproc_client_submit(claim, "sys_echo", strlen(text), err) != NUMAPROC_CLIENT_OK ||
        numaproc_client_wait(claim, 5000, &out, &out_len, err) != NUMAPROC_CLIENT_OK)
        rc = fail("zero copy", err);
    else
        printf("zero copy: %.*s\n", (int)out_len, (const char *)out);
    numaproc_client_release(claim); /* out is invalid from here on */
    return rc;
}

static int run(numaproc_client *c) {
    numaproc_client_error err;
    const char *hello = "hello from C";
    char out[64];
    size_t len;
    numaproc_client_status st =
        numaproc_client_call(c, "sys_echo", hello, strlen(hello), out, sizeof out, &len, &err);
    if (st != NUMAPROC_CLIENT_OK)
        return fail("sys_echo", &err);
    printf("sys_echo: %.*s\n", (int)len, out);

    if (zero_copy(c, &err))
        return 1;

    char small[4];
    st = numaproc_client_call(c, "sys_echo", hello, strlen(hello), small, sizeof small, &len,
                              &err);
    if (st != NUMAPROC_CLIENT_OUTPUT_TOO_SMALL)
        return fail("sys_echo into 4 bytes", &err);
    printf("4-byte buffer: %s, %zu bytes needed\n", numaproc_client_status_str(st), len);

    st = numaproc_client_call(c, "sys_sleep", "soon", 4, NULL, 0, &len, &err);
    if (st != NUMAPROC_CLIENT_FAILED)
        return fail("sys_sleep soon", &err);
    printf("sys_sleep soon: %s, code %u\n", numaproc_client_status_str(st), err.code);

    st = numaproc_client_call(c, "no_such_proc", NULL, 0, NULL, 0, &len, &err);
    if (st != NUMAPROC_CLIENT_PROC_NOT_FOUND)
        return fail("no_such_proc", &err);
    printf("no_such_proc: %s\n", numaproc_client_status_str(st));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s NAME [RUNTIME_DIR]\n", argv[0]);
        return 2;
    }
    if (numaproc_client_abi_version() != NUMAPROC_CLIENT_ABI_VERSION) {
        fprintf(stderr, "client: libnumaproc_client has ABI %u, this program %u\n",
                numaproc_client_abi_version(), NUMAPROC_CLIENT_ABI_VERSION);
        return 1;
    }
    numaproc_client_error err;
    numaproc_client *c = numaproc_client_connect(argv[1], argc == 3 ? argv[2] : NULL, 0, &err);
    if (!c)
        return fail("connect", &err);
    int rc = run(c);
    numaproc_client_disconnect(c);
    return rc;
}
