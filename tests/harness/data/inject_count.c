/* How strace's inject when=N counts under -f: the main thread, a thread and a
 * forked child each call dup() and report every result on stdout as
 * "WHO#I ok|EINTR".  The main thread calls dup3() in between, to show that
 * syscalls in one inject rule are counted separately. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void probe(const char *who, int n)
{
    for (int i = 1; i <= n; i++) {
        int fd = dup(0);
        printf("%s#%d %s\n", who, i, fd >= 0 ? "ok" : errno == EINTR ? "EINTR" : "other");
        fflush(stdout);
        if (fd >= 0)
            close(fd);
    }
}

static void *thread_main(void *arg)
{
    (void)arg;
    probe("thread", 3);
    return NULL;
}

int main(void)
{
    probe("main", 2);
    int fd = dup3(0, 20, 0);
    printf("dup3#1 %s\n", fd >= 0 ? "ok" : errno == EINTR ? "EINTR" : "other");
    fflush(stdout);
    pthread_t t;
    pthread_create(&t, NULL, thread_main, NULL);
    pthread_join(t, NULL);
    pid_t p = fork();
    if (p == 0) {
        probe("child", 3);
        _exit(0);
    }
    waitpid(p, NULL, 0);
    probe("main-again", 2);
    return 0;
}
