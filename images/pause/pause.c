/*
 * pause: the do-nothing PID 1 of sandbox-operator's images.
 *
 * It is containerd's pod sandbox ("pause") container and, installed as /usr/local/bin/sandbox-init, the main
 * process of every sandbox container: it keeps the pod alive, reaps the zombies that orphaned processes
 * (everything started by `kubectl exec` and then abandoned) leave behind, and exits 0 on SIGTERM or SIGINT.
 * Same behaviour as Kubernetes' build/pause/linux/pause.c; built with `gcc -Os -static`.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

static void on_terminate(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    int saved_errno = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved_errno;
}

int main(int argc, char **argv) {
    struct sigaction sa;

    if (argc == 2 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        printf("pause (sandbox-operator) %s\n", VERSION);
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--version]\n", argv[0]);
        return 2;
    }

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_terminate;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    on_child(0); /* children that exited before the handler was installed */

    for (;;) {
        pause();
    }
    return 42; /* not reached */
}
