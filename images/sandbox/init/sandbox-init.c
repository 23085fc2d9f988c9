/*
 * sandbox-init: PID 1 of every sandbox container (/usr/local/bin/sandbox-init).
 *
 * - Non-dumpable from its first instruction (and installed execute-only): no process of the sandbox can open
 *   /proc/1/fd/N, read /proc/1/environ or ptrace it, although they all run as the same UID.
 * - Reaps zombies, like the pause container, and exits 0 on SIGTERM or SIGINT.
 * - Every $SANDBOX_ORPHAN_SWEEP_SECONDS (default 1, 0 = never) it SIGKILLs every process whose parent it is. It
 *   starts nothing itself, so those are all orphans, and an orphan means that something escaped its exec
 *   wrapper: the wrapper (sandbox-exec) is a child subreaper that keeps a command's processes in its own subtree,
 *   so they reach PID 1 only when the wrapper itself died (the command can SIGKILL it: same UID) or when they
 *   were started by a raw exec that bypassed it. Nothing would bound them any more. Processes started by
 *   `kubectl exec` have a parent outside the container (PPid 0 here), so they are never touched.
 *
 * - Checks at start, before its main loop, that commands can run: each directory in $SANDBOX_WRITABLE_ROOTS
 *   (colon-separated, default /workspace:/tmp) is a directory it can write to, and the exec wrapper and the tools'
 *   interpreter are executable. If not, it writes one line naming every problem to the termination log and to
 *   stderr and exits 1, so the pod fails and the Sandbox says why. The pod has no readiness probe (an exec probe
 *   spawns a process in every sandbox every period): a running sandbox-init is the sign that the sandbox works.
 *   The checked paths are compile-time constants; only tests build it with others (-DSANDBOX_EXEC_PATH=...).
 *
 * Signals are blocked and taken with sigtimedwait, so a sweep never races with reaping: a child cannot be
 * reaped (and its pid reused) between reading its /proc entry and killing it. An idle sandbox costs one wake-up
 * and one scan of a near-empty /proc per period. Built with `gcc -Os -static` by hack/build-images.sh.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

#define SWEEP_ENV "SANDBOX_ORPHAN_SWEEP_SECONDS"
#define DEFAULT_SWEEP_SECONDS 1
#define MAX_SWEEP_SECONDS 86400

#define WRITABLE_ROOTS_ENV "SANDBOX_WRITABLE_ROOTS"
#define DEFAULT_WRITABLE_ROOTS "/workspace:/tmp"
/* Overridable at compile time for the unit tests only, which run it on a host without these files. */
#ifndef SANDBOX_EXEC_PATH
#define SANDBOX_EXEC_PATH "/usr/local/bin/sandbox-exec"
#endif
#ifndef SANDBOX_PYTHON_PATH
#define SANDBOX_PYTHON_PATH "/usr/local/libexec/sandbox-python"
#endif
#ifndef TERMINATION_LOG_PATH
#define TERMINATION_LOG_PATH "/dev/termination-log"
#endif
#define PROBLEMS_MAX 1024

/* The parent pid and state of the process in /proc/PID/stat text "PID (COMM) STATE PPID ...". COMM may hold
 * spaces and parentheses: the fields start after its last ')'. Returns 0, or -1 when the text does not parse. */
static int parse_stat(const char *text, char *state, long *ppid) {
    const char *end_of_comm = strrchr(text, ')');
    if (end_of_comm == NULL || sscanf(end_of_comm + 1, " %c %ld", state, ppid) != 2) {
        return -1;
    }
    return 0;
}

/* The parent pid of process `name` (a /proc entry), or -1 if it is gone, a zombie, or not a process. */
static long live_parent_of(const char *name) {
    char path[64], text[512], state;
    long ppid;
    ssize_t n;
    int fd;

    if (snprintf(path, sizeof path, "/proc/%s/stat", name) >= (int)sizeof path) {
        return -1;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    text[n] = '\0';
    if (parse_stat(text, &state, &ppid) < 0 || state == 'Z' || state == 'X') {
        return -1;
    }
    return ppid;
}

static int is_pid(const char *name) {
    if (*name == '\0') {
        return 0;
    }
    for (; *name != '\0'; name++) {
        if (*name < '0' || *name > '9') {
            return 0;
        }
    }
    return 1;
}

/* SIGKILLs every live child of this process; returns how many. */
static int sweep_orphans(void) {
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    long self = (long)getpid();
    int killed = 0;

    if (proc == NULL) {
        return 0;
    }
    while ((entry = readdir(proc)) != NULL) {
        if (is_pid(entry->d_name) && live_parent_of(entry->d_name) == self) {
            if (kill((pid_t)strtol(entry->d_name, NULL, 10), SIGKILL) == 0) {
                killed++;
            }
        }
    }
    closedir(proc);
    return killed;
}

static void reap_children(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

/* The sweep period in seconds from the environment (0 = no sweep); -1 if the value is not a whole number of
 * seconds in range. */
static long sweep_seconds(void) {
    const char *text = getenv(SWEEP_ENV);
    char *end;
    long value;

    if (text == NULL || *text == '\0') {
        return DEFAULT_SWEEP_SECONDS;
    }
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 0 || value > MAX_SWEEP_SECONDS) {
        return -1;
    }
    return value;
}

/* Appends "PATH WHAT[: strerror(ERROR)]" to the problem line, "; "-separated; a line that no longer fits ends
 * truncated. */
static void add_problem(char *line, const char *path, const char *what, int error) {
    size_t used = strlen(line);
    if (used + 1 >= PROBLEMS_MAX) {
        return;
    }
    snprintf(line + used, PROBLEMS_MAX - used, "%s%s %s%s%s", used ? "; " : "", path, what, error ? ": " : "",
             error ? strerror(error) : "");
}

static void check_writable_dir(char *line, const char *dir) {
    struct stat st;
    if (stat(dir, &st) < 0) {
        add_problem(line, dir, "is not a writable directory", errno);
    } else if (!S_ISDIR(st.st_mode)) {
        add_problem(line, dir, "is not a directory", 0);
    } else if (access(dir, W_OK) < 0) {
        add_problem(line, dir, "is not writable", errno);
    }
}

static void check_executable(char *line, const char *path) {
    struct stat st;
    if (stat(path, &st) < 0) {
        add_problem(line, path, "is missing", errno);
    } else if (!S_ISREG(st.st_mode)) {
        add_problem(line, path, "is not a regular file", 0);
    } else if (access(path, X_OK) < 0) {
        add_problem(line, path, "is not executable", errno);
    }
}

/* 0 when commands can run here; else 1 after reporting why on the termination log (when the kubelet provided
 * one: it is never created here) and on stderr. A handful of system calls: microseconds. */
static int self_check(void) {
    char line[PROBLEMS_MAX] = "";
    char roots[PROBLEMS_MAX];
    const char *configured = getenv(WRITABLE_ROOTS_ENV);
    char *dir, *rest;
    int fd;

    if (configured == NULL || *configured == '\0') {
        configured = DEFAULT_WRITABLE_ROOTS;
    }
    if (snprintf(roots, sizeof roots, "%s", configured) >= (int)sizeof roots) {
        add_problem(line, "$" WRITABLE_ROOTS_ENV, "is too long", 0);
    } else {
        for (dir = strtok_r(roots, ":", &rest); dir != NULL; dir = strtok_r(NULL, ":", &rest)) {
            check_writable_dir(line, dir);
        }
    }
    check_executable(line, SANDBOX_EXEC_PATH);
    check_executable(line, SANDBOX_PYTHON_PATH);
    if (line[0] == '\0') {
        return 0;
    }
    fd = open(TERMINATION_LOG_PATH, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW);
    if (fd >= 0) {
        dprintf(fd, "sandbox-init: %s\n", line);
        close(fd);
    }
    fprintf(stderr, "sandbox-init: %s\n", line);
    return 1;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    sigset_t waited;
    long period;
    double next_sweep = 0;

    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    if (argc == 2 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("sandbox-init (sandbox-operator) %s\n", VERSION);
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--version]\n", argv[0]);
        return 2;
    }
    period = sweep_seconds();
    if (period < 0) {
        fprintf(stderr, "sandbox-init: %s must be a whole number of seconds from 0 to %d\n", SWEEP_ENV,
                MAX_SWEEP_SECONDS);
        return 2;
    }
    if (self_check() != 0) {
        return 1;
    }

    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    if (sigprocmask(SIG_BLOCK, &waited, NULL) < 0) {
        perror("sandbox-init: sigprocmask");
        return 1;
    }
    reap_children(); /* children that exited before the signals were blocked */
    if (period > 0) {
        next_sweep = now_seconds() + (double)period;
    }

    for (;;) {
        int sig;
        if (period > 0) {
            double remaining = next_sweep - now_seconds();
            struct timespec timeout;
            if (remaining <= 0) {
                sweep_orphans();
                reap_children();
                next_sweep = now_seconds() + (double)period;
                continue;
            }
            timeout.tv_sec = (time_t)remaining;
            timeout.tv_nsec = (long)((remaining - (double)timeout.tv_sec) * 1e9);
            sig = sigtimedwait(&waited, NULL, &timeout);
        } else {
            sig = sigwaitinfo(&waited, NULL);
        }
        if (sig == SIGTERM || sig == SIGINT) {
            return 0;
        }
        if (sig == SIGCHLD) {
            reap_children();
        }
    }
}
