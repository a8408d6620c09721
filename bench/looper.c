// SPDX-License-Identifier: GPL-3.0-or-later
// The benchmark's looper: emits COUNT events with ids (as fast as the supervisor takes them, or
// paced at RATE a second), reads the answers and records the latency of each, from the moment
// its line was written to the moment its answer was read. Written in C so that the looper is
// never what limits the measured rate.
//
//   bench-looper --count N [--rate R] [--key KEY] [--tag TAG] --out FILE
// (--tag adds a string field "s": "TAG-N" to each body, for routes' regular expressions)
//
// FILE receives JSON progress every 100 ms and the final figures once every event is answered;
// then the looper waits for EOF on stdin (the supervisor's request to stop), as loopers must.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void* a, const void* b) {
    uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
    return x < y ? -1 : x > y;
}

struct state {
    long count, sent, answered, unrouted, succeeded, other;
    double rate;
    const char* key;
    const char* out;
    const char* tag; // --tag: bodies get "s": "TAG-N"
    uint64_t *sent_at, *latency, t_first, t_last;
    char wbuf[1 << 16];
    size_t wlen, woff;
    char rbuf[1 << 16];
    size_t rlen;
};

static double pct(const uint64_t* sorted, long n, double p) {
    if (n == 0) return 0;
    long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1000.0;
}

static void report(struct state* s, int final) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", s->out);
    FILE* f = fopen(tmp, "w");
    if (!f) return;
    double elapsed = s->t_last > s->t_first ? (double)(s->t_last - s->t_first) / 1e9 : 0;
    fprintf(f,
            "{\"final\": %s, \"count\": %ld, \"sent\": %ld, \"answered\": %ld, \"unrouted\": %ld, "
            "\"succeeded\": %ld, \"other\": %ld, \"elapsed_s\": %.6f, \"events_per_s\": %.1f",
            final ? "true" : "false", s->count, s->sent, s->answered, s->unrouted, s->succeeded,
            s->other, elapsed, elapsed > 0 ? (double)s->answered / elapsed : 0.0);
    if (final && s->answered > 0) {
        qsort(s->latency, (size_t)s->answered, sizeof *s->latency, cmp_u64);
        long n = s->answered;
        fprintf(f,
                ", \"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p99.9\": %.1f, "
                "\"max\": %.1f}",
                pct(s->latency, n, 50), pct(s->latency, n, 90), pct(s->latency, n, 99),
                pct(s->latency, n, 99.9), (double)s->latency[n - 1] / 1000.0);
    }
    fprintf(f, "}\n");
    fclose(f);
    rename(tmp, s->out);
}

// Fills the write buffer with as many due events as fit.
static void produce(struct state* s, uint64_t t) {
    if (s->woff == s->wlen) s->woff = s->wlen = 0;
    while (s->sent < s->count && s->wlen + 256 < sizeof s->wbuf) {
        if (s->rate > 0 && t < s->t_first + (uint64_t)((double)s->sent * 1e9 / s->rate)) break;
        int n = s->tag ? snprintf(s->wbuf + s->wlen, sizeof s->wbuf - s->wlen,
                                  "{\"id\":%ld,\"routing_key\":\"%s\",\"body\":{\"n\":%ld,"
                                  "\"s\":\"%s-%ld\"}}\n",
                                  s->sent, s->key, s->sent, s->tag, s->sent)
                       : snprintf(s->wbuf + s->wlen, sizeof s->wbuf - s->wlen,
                                  "{\"id\":%ld,\"routing_key\":\"%s\",\"body\":{\"n\":%ld}}\n",
                                  s->sent, s->key, s->sent);
        s->wlen += (size_t)n;
        s->sent_at[s->sent++] = t;
        if (s->rate > 0) break; // paced: one line per write, stamped when written
    }
}

static void take_answer(struct state* s, const char* line, uint64_t t) {
    const char* p = strstr(line, "\"id\":");
    if (!p) return;
    long id = strtol(p + 5, NULL, 10);
    if (id < 0 || id >= s->count) return;
    s->latency[s->answered++] = t - s->sent_at[id];
    s->t_last = t;
    if (strstr(line, "\"unrouted\""))
        s->unrouted++;
    else if (strstr(line, "\"succeeded\""))
        s->succeeded++;
    else
        s->other++;
}

static int read_answers(struct state* s) {
    ssize_t n = read(0, s->rbuf + s->rlen, sizeof s->rbuf - s->rlen - 1);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0) return -1;
    uint64_t t = now_ns();
    s->rlen += (size_t)n;
    s->rbuf[s->rlen] = 0;
    char* start = s->rbuf;
    char* nl;
    while ((nl = memchr(start, '\n', s->rlen - (size_t)(start - s->rbuf)))) {
        *nl = 0;
        take_answer(s, start, t);
        start = nl + 1;
    }
    s->rlen -= (size_t)(start - s->rbuf);
    memmove(s->rbuf, start, s->rlen);
    return 0;
}

int main(int argc, char** argv) {
    static struct state s = {.key = "bench.unrouted"};
    double delay = 0; // seconds before the first event (a warm runner importing ansible)
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--count")) s.count = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) s.rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--key")) s.key = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) s.out = argv[i + 1];
        else if (!strcmp(argv[i], "--tag")) s.tag = argv[i + 1];
        else if (!strcmp(argv[i], "--delay")) delay = atof(argv[i + 1]);
    }
    if (!s.out) {
        fprintf(stderr, "usage: bench-looper --count N [--rate R] [--key KEY] [--delay S] --out FILE\n");
        return 2;
    }
    s.sent_at = calloc((size_t)s.count + 1, sizeof *s.sent_at);
    s.latency = calloc((size_t)s.count + 1, sizeof *s.latency);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
    // Wake-ups when due, not up to 50 us later: the latency measured is the supervisor's.
    prctl(PR_SET_TIMERSLACK, 1UL);
    if (delay > 0) {
        struct timespec d = {(time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9)};
        while (nanosleep(&d, &d) < 0 && errno == EINTR) {
        }
    }
    s.t_first = now_ns();
    uint64_t next_report = s.t_first;
    int done = 0;
    while (1) {
        uint64_t t = now_ns();
        if (!done && s.answered >= s.count) {
            done = 1;
            report(&s, 1);
        }
        if (!done && t >= next_report) {
            report(&s, 0);
            next_report = t + 100000000u;
        }
        produce(&s, t);
        struct pollfd fds[2] = {{0, POLLIN, 0}, {1, s.woff < s.wlen ? POLLOUT : 0, 0}};
        // 100 ms at most (progress reports); a paced looper wakes when its next event is due.
        uint64_t wait = 100000000u;
        if (s.rate > 0 && s.sent < s.count && s.woff == s.wlen) {
            uint64_t due = s.t_first + (uint64_t)((double)s.sent * 1e9 / s.rate);
            wait = due > t ? due - t : 0;
        }
        struct timespec ts = {(time_t)(wait / 1000000000u), (long)(wait % 1000000000u)};
        if (ppoll(fds, done || s.woff == s.wlen ? 1 : 2, &ts, NULL) < 0 && errno != EINTR) return 1;
        if (fds[0].revents && read_answers(&s) < 0) break; // EOF: asked to stop
        if (s.woff < s.wlen && (fds[1].revents & POLLOUT || s.rate > 0)) {
            ssize_t n = write(1, s.wbuf + s.woff, s.wlen - s.woff);
            if (n > 0) s.woff += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR) return 1;
        }
    }
    if (!done) report(&s, 0);
    return 0;
}
