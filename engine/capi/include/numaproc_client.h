/*
 * numaproc_client.h — the C client of a numaproc server (client ABI 1).
 *
 * A program links libnumaproc_client.so, attaches to a server that
 * `numaproc serve --name NAME` runs, and calls its procedures through the
 * server's shared memory, as the server's own threads do.
 *
 *     numaproc_client_error err;
 *     numaproc_client *c = numaproc_client_connect("orders", NULL, 0, &err);
 *     if (!c) { fprintf(stderr, "%s\n", err.message); return 1; }
 *     char out[64];
 *     size_t len;
 *     if (numaproc_client_call(c, "sys_echo", "hi", 2, out, sizeof out, &len, &err)
 *             != NUMAPROC_CLIENT_OK)
 *         fprintf(stderr, "%s: %s\n", numaproc_client_status_str(err.status), err.message);
 *     numaproc_client_disconnect(c);
 *
 * Statuses. Every function that can fail returns a numaproc_client_status
 * and, when `err` is not NULL, fills *err: its status (the same), the
 * procedure's own error code for NUMAPROC_CLIENT_FAILED (0 otherwise), and
 * a NUL-terminated message (truncated to NUMAPROC_CLIENT_MESSAGE_SIZE - 1
 * bytes, at a UTF-8 character boundary). On success *err holds
 * NUMAPROC_CLIENT_OK, code 0 and an empty message. There is no global or
 * thread-local error state.
 *
 * Threads. A numaproc_client may be used by any number of threads at once
 * (each call claims a worker of its own). A numaproc_claim is used by one
 * thread at a time; it may be handed to another thread.
 *
 * Ownership. numaproc_client_connect returns a client that the caller
 * owns until numaproc_client_disconnect. numaproc_client_claim returns a
 * claim that the caller owns until numaproc_client_release. Release every
 * claim before disconnecting its client (a claim still held keeps the
 * connection open until it is released; it never dangles). Disconnect and
 * release with NULL do nothing. No function keeps a pointer it was given
 * beyond its return; names are copied or looked up at once.
 *
 * Panics inside the library never cross into C: they end the function with
 * NUMAPROC_CLIENT_INTERNAL.
 *
 * This header can be included together with numaproc.h (the procedure
 * library ABI): no name is shared.
 */
#ifndef NUMAPROC_CLIENT_H
#define NUMAPROC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this interface; numaproc_client_abi_version() gives the
 * loaded library's. A program built against another version should not
 * call into the library. */
#define NUMAPROC_CLIENT_ABI_VERSION 1u

/* The size of numaproc_client_error.message, NUL included. */
#define NUMAPROC_CLIENT_MESSAGE_SIZE 512

/* A SOC or worker index meaning "any". */
#define NUMAPROC_CLIENT_ANY (-1)

/* Statuses (see numaproc_client_status_str for their text). */
typedef uint32_t numaproc_client_status;

#define NUMAPROC_CLIENT_OK 0u
/* A NULL pointer where one is required, a name that is not UTF-8, a
 * worker without a SOC, a claim in the wrong state for the function. */
#define NUMAPROC_CLIENT_INVALID_ARGUMENT 1u
/* The call succeeded but its output does not fit the caller's buffer: the
 * output is lost, *out_len holds the size it needs. */
#define NUMAPROC_CLIENT_OUTPUT_TOO_SMALL 2u

/* Why a call failed. */
#define NUMAPROC_CLIENT_PROC_NOT_FOUND 10u   /* no procedure has this name */
#define NUMAPROC_CLIENT_FAILED 11u           /* the procedure returned an error: code, message */
#define NUMAPROC_CLIENT_PANICKED 12u         /* the procedure panicked; its worker goes on */
#define NUMAPROC_CLIENT_INPUT_TOO_LARGE 13u  /* input larger than a worker's input buffer */
#define NUMAPROC_CLIENT_OUTPUT_TOO_LARGE 14u /* the procedure's output overflowed the server's buffer */
#define NUMAPROC_CLIENT_BUSY 15u             /* no worker of the target was idle (timeout 0) */
#define NUMAPROC_CLIENT_CLAIM_TIMEOUT 16u    /* no worker became idle in time */
#define NUMAPROC_CLIENT_CALL_TIMEOUT 17u     /* no result in time (a claim's call goes on) */
#define NUMAPROC_CLIENT_NO_SUCH_TARGET 18u   /* the SOC or worker does not exist */
#define NUMAPROC_CLIENT_SOC_DIED 19u         /* the SOC running the call died; outcome unknown */
#define NUMAPROC_CLIENT_SOC_MISBEHAVED 20u   /* the SOC broke the slot protocol; outcome unknown */
#define NUMAPROC_CLIENT_KILLED 21u           /* the call overran the server's hard limit */
#define NUMAPROC_CLIENT_UNAVAILABLE 22u      /* the target's SOCs died too often and were given up */
#define NUMAPROC_CLIENT_ENGINE_GONE 23u      /* the server stopped or died: connect again */

/* Why a connection failed. */
#define NUMAPROC_CLIENT_NOT_RUNNING 30u      /* no server runs under the name */
#define NUMAPROC_CLIENT_REFUSED 31u          /* the server refused this process */
#define NUMAPROC_CLIENT_VERSION_MISMATCH 32u /* the server speaks another version (both named) */
#define NUMAPROC_CLIENT_PROTOCOL 33u         /* the server's answer does not follow the protocol */
#define NUMAPROC_CLIENT_BAD_SERVER 34u       /* the name or runtime directory is not usable */
#define NUMAPROC_CLIENT_OPEN 35u             /* the server's shared memory could not be mapped */
#define NUMAPROC_CLIENT_ATTACH 36u           /* the shared memory does not describe a usable engine */

/* A bug in the library (a panic, caught), or an error this version of the
 * library does not know. */
#define NUMAPROC_CLIENT_INTERNAL 98u
#define NUMAPROC_CLIENT_UNKNOWN 99u

/* What went wrong, filled by the function it is given to. */
typedef struct numaproc_client_error {
    numaproc_client_status status;
    /* NUMAPROC_CLIENT_FAILED: the procedure's error code; 0 otherwise. */
    uint32_t code;
    /* NUL-terminated, possibly truncated; empty on success. */
    char message[NUMAPROC_CLIENT_MESSAGE_SIZE];
} numaproc_client_error;

/* A connection to a server (opaque). */
typedef struct numaproc_client numaproc_client;

/* A claimed worker, from numaproc_client_claim to numaproc_client_release
 * (opaque). */
typedef struct numaproc_claim numaproc_claim;

/* NUMAPROC_CLIENT_ABI_VERSION of the loaded library. */
uint32_t numaproc_client_abi_version(void);

/* A static, NUL-terminated text for `status` ("unknown status" for a value
 * no version defines). Never NULL; never free it. */
const char *numaproc_client_status_str(numaproc_client_status status);

/* Attaches to the server `name` (1 to 64 bytes of [A-Za-z0-9_-]) in
 * `runtime_dir`, or, when it is NULL, in the default directory of
 * `numaproc serve` ($XDG_RUNTIME_DIR/numaproc; /run/numaproc for root). `timeout_ms` bounds the attach
 * (0: 5000). Calls then wait up to 10 s for an idle worker and 60 s for a
 * result, unless they say otherwise.
 *
 * Returns the client, or NULL with *err saying why: NOT_RUNNING (at once
 * when no server runs), REFUSED, VERSION_MISMATCH, PROTOCOL, BAD_SERVER,
 * OPEN, ATTACH, INVALID_ARGUMENT. `err` may be NULL. */
numaproc_client *numaproc_client_connect(const char *name, const char *runtime_dir,
                                         uint32_t timeout_ms, numaproc_client_error *err);

/* Detaches and frees the client. Call it once, when no other thread uses
 * the client; NULL does nothing. Claims not yet released stay usable and
 * keep the connection until they are released. */
void numaproc_client_disconnect(numaproc_client *client);

/* The capacity of every worker's input buffer, and of its output buffer
 * (an output buffer this large always holds a call's output); 0 for NULL. */
size_t numaproc_client_input_capacity(const numaproc_client *client);
size_t numaproc_client_output_capacity(const numaproc_client *client);

/* Calls procedure `proc` with the `in_len` bytes at `in` (NULL when
 * in_len is 0) on any idle worker, waiting up to the client's claim and
 * call timeouts, and copies its output into `out` (NULL when out_cap is
 * 0), its length into *out_len.
 *
 * NUMAPROC_CLIENT_OUTPUT_TOO_SMALL: the call ran, but its output did not
 * fit `out_cap`: *out_len holds the length it needs, and the output is
 * lost (numaproc_client_output_capacity bytes always suffice). On any
 * other failure *out_len is 0. `client`, `proc` and `out_len` must not be
 * NULL (INVALID_ARGUMENT, and nothing is called). */
numaproc_client_status numaproc_client_call(numaproc_client *client, const char *proc,
                                            const void *in, size_t in_len, void *out,
                                            size_t out_cap, size_t *out_len,
                                            numaproc_client_error *err);

/* numaproc_client_call on a chosen target: `soc` (NUMAPROC_CLIENT_ANY for
 * any SOC) and `worker` within it (NUMAPROC_CLIENT_ANY for any worker of
 * the SOC; a worker needs a SOC). A target that does not exist gives
 * NO_SUCH_TARGET. */
numaproc_client_status numaproc_client_call_on(numaproc_client *client, int32_t soc,
                                               int32_t worker, const char *proc,
                                               const void *in, size_t in_len, void *out,
                                               size_t out_cap, size_t *out_len,
                                               numaproc_client_error *err);

/* numaproc_client_call_on with a deadline `timeout_ms` from now for the
 * whole call: waiting for a worker (CLAIM_TIMEOUT), running (the procedure
 * sees that it is cancelled past the deadline) and waiting for the result
 * (CALL_TIMEOUT; the worker is given back once the procedure returns). */
numaproc_client_status numaproc_client_call_within(numaproc_client *client, int32_t soc,
                                                   int32_t worker, const char *proc,
                                                   const void *in, size_t in_len, void *out,
                                                   size_t out_cap, size_t *out_len,
                                                   uint32_t timeout_ms,
                                                   numaproc_client_error *err);

/* Zero copy: claim a worker, write the input straight into its buffer,
 * submit, wait, read the output where the worker wrote it, release.
 *
 *     numaproc_claim *cl = numaproc_client_claim(c, NUMAPROC_CLIENT_ANY,
 *                                                NUMAPROC_CLIENT_ANY, 1000, &err);
 *     size_t cap;
 *     char *in = numaproc_client_claim_input(cl, &cap);
 *     memcpy(in, "abc", 3);
 *     const void *out;
 *     size_t len;
 *     if (numaproc_client_submit(cl, "sys_echo", 3, &err) == NUMAPROC_CLIENT_OK &&
 *         numaproc_client_wait(cl, 1000, &out, &len, &err) == NUMAPROC_CLIENT_OK)
 *         fwrite(out, 1, len, stdout);
 *     numaproc_client_release(cl);
 */

/* Claims an idle worker of the target (as in numaproc_client_call_on),
 * waiting at most `timeout_ms` for one (0: BUSY at once when none is
 * idle). Returns the claim, or NULL with *err saying why. The worker
 * serves no one else until numaproc_client_release. */
numaproc_claim *numaproc_client_claim(numaproc_client *client, int32_t soc, int32_t worker,
                                      uint32_t timeout_ms, numaproc_client_error *err);

/* The claimed worker's input buffer, writable until the claim is
 * submitted or released, and its capacity in *capacity (when not NULL).
 * NULL, and a capacity of 0, when `claim` is NULL or already submitted. */
void *numaproc_client_claim_input(numaproc_claim *claim, size_t *capacity);

/* Hands the first `in_len` bytes of the input buffer to the worker as the
 * input of `proc`. On PROC_NOT_FOUND, INPUT_TOO_LARGE and INVALID_ARGUMENT
 * the worker stays claimed (submit again); any other failure gives the
 * worker back, and the claim can only be released. */
numaproc_client_status numaproc_client_submit(numaproc_claim *claim, const char *proc,
                                              size_t in_len, numaproc_client_error *err);

/* Waits at most `timeout_ms` (0: only looks) for the submitted call's
 * result. On success *out points to the output in the worker's buffer,
 * *out_len bytes long, valid until numaproc_client_release; the bytes are
 * the procedure's, so parse them defensively. On CALL_TIMEOUT the call
 * goes on: wait again or release. Once the outcome is known every wait
 * gives it again. `out` and `out_len` must not be NULL. */
numaproc_client_status numaproc_client_wait(numaproc_claim *claim, uint32_t timeout_ms,
                                            const void **out, size_t *out_len,
                                            numaproc_client_error *err);

/* Gives the worker back and frees the claim (a call still running sees
 * that it is cancelled; its worker serves again once it returns). The
 * input and output pointers of the claim are invalid afterwards. NULL does
 * nothing. */
void numaproc_client_release(numaproc_claim *claim);

#ifdef __cplusplus
}
#endif

#endif /* NUMAPROC_CLIENT_H */
