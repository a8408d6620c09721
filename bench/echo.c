// SPDX-License-Identifier: GPL-3.0-or-later
// The latency floor of this machine: answers every event line at once, with nothing else in
// between (no parsing beyond the id, no event loop), so that bench-looper talking to it measures
// what two processes and two pipes cost here, side by side with the supervisor.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    static char buf[1 << 16], out[1 << 17];
    size_t len = 0;
    ssize_t n;
    while ((n = read(0, buf + len, sizeof buf - len - 1)) > 0) {
        len += (size_t)n;
        size_t olen = 0;
        char *start = buf, *nl;
        while ((nl = memchr(start, '\n', len - (size_t)(start - buf)))) {
            *nl = 0;
            const char* id = strstr(start, "\"id\":");
            olen += (size_t)snprintf(out + olen, sizeof out - olen,
                                     "{\"exit_code\":null,\"id\":%ld,\"result\":\"unrouted\"}\n",
                                     id ? strtol(id + 5, NULL, 10) : -1L);
            start = nl + 1;
        }
        len -= (size_t)(start - buf);
        memmove(buf, start, len);
        for (size_t off = 0; off < olen;) {
            ssize_t w = write(1, out + off, olen - off);
            if (w <= 0) return 1;
            off += (size_t)w;
        }
    }
    return 0;
}
