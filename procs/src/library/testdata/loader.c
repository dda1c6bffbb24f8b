/*
 * Procedure libraries for the loader's unit tests (library/load.rs), which
 * compile this file once per variant with the system C compiler:
 *   (no flag)        "unitlib" 1.2.3: unit.echo answers its input,
 *                    unit.ok answers nothing; init logs "init", deinit
 *                    "deinit" through the host's log;
 *   NULL_DESCRIPTOR  numaproc_library_v1 returns NULL;
 *   MISALIGNED       numaproc_library_v1 returns the descriptor's address
 *                    plus one;
 *   NULL_SYMBOL      numaproc_library_v1 is an absolute symbol of value 0:
 *                    the dynamic loader finds it, at address NULL;
 *   NO_SYMBOL        the entry point has another name.
 */
#include <string.h>

#include "numaproc.h"

static uint32_t echo(numaproc_call *call) {
    if (call->input_len > call->output_capacity) {
        call->output_len = call->input_len;
        return NUMAPROC_STATUS_OUTPUT_TOO_LARGE;
    }
    memcpy(call->output, call->input, call->input_len);
    call->output_len = call->input_len;
    return NUMAPROC_STATUS_OK;
}

static uint32_t ok(numaproc_call *call) {
    call->output_len = 0;
    return NUMAPROC_STATUS_OK;
}

static void say(const numaproc_host *host, const char *what) {
    host->log(host, NUMAPROC_LOG_INFO, what, strlen(what));
}

static int32_t init(const numaproc_host *host, char *error, size_t cap) {
    (void)error;
    (void)cap;
    say(host, "init");
    return 0;
}

static void deinit(const numaproc_host *host) { say(host, "deinit"); }

static const numaproc_procedure procedures[] = {
    {"unit.echo", echo, 0, 0},
    {"unit.ok", ok, 0, 0},
};

__attribute__((used)) static const numaproc_library library = {
    NUMAPROC_LIBRARY_HEADER,
    "unitlib",
    "1.2.3",
    procedures,
    2,
    0,
    init,
    deinit,
};

#if defined(NULL_SYMBOL)
__asm__(".globl numaproc_library_v1\n.set numaproc_library_v1, 0\n");
#elif defined(NO_SYMBOL)
const numaproc_library *not_numaproc_library_v1(void) { return &library; }
#else
const numaproc_library *numaproc_library_v1(void) {
#if defined(NULL_DESCRIPTOR)
    return NULL;
#elif defined(MISALIGNED)
    return (const numaproc_library *)((const char *)&library + 1);
#else
    return &library;
#endif
}
#endif
