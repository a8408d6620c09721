// SPDX-License-Identifier: GPL-3.0-or-later
// The baseline the executor is measured against: COUNT runs of a program with posix_spawn and
// waitpid, at most PARALLEL at a time, with nothing else around them. Prints JSON.
//
//   bench-spawn COUNT PARALLEL PROGRAM [ARGS...]
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char** environ;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench-spawn COUNT PARALLEL PROGRAM [ARGS...]\n");
        return 2;
    }
    long count = atol(argv[1]), parallel = atol(argv[2]), started = 0, failed = 0;
    long running = 0;
    // The programs' output goes to /dev/null: stdout is ours, for the figures.
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_t* actions = getenv("BENCH_SPAWN_QUIET") ? &fa : NULL;
    double t0 = now_s();
    while (started < count || running > 0) {
        while (started < count && running < parallel) {
            pid_t pid;
            if (posix_spawn(&pid, argv[3], actions, NULL, argv + 3, environ) != 0) return 1;
            ++started;
            ++running;
        }
        int status;
        if (waitpid(-1, &status, 0) < 0) return 1;
        --running;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
    double elapsed = now_s() - t0;
    printf("{\"count\": %ld, \"parallel\": %ld, \"failed\": %ld, \"elapsed_s\": %.6f, "
           "\"per_job_us\": %.1f, \"jobs_per_s\": %.1f}\n",
           count, parallel, failed, elapsed, elapsed / (double)count * 1e6,
           (double)count / elapsed);
    return 0;
}
