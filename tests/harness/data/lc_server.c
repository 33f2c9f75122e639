/* A classic one-shot hello server with deliberate lifecycle variants, for the
 * LIFE-0 checker's tests (tests/harness/test_trace.py).
 *
 *   lc_server PORT [VARIANT]
 *
 * VARIANT: ok (default), retry (EINTR-retrying accept/write/read: ERR-8),
 * drain (greeting, shutdown(SHUT_WR), read until EOF), close-listener-first,
 * write-listener, no-close, setsockopt-after-bind, listen-before-bind,
 * bind-before-socket, dup2 (serves through a dup2()ed copy), write-dup-listener.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void error_handling(const char *msg)
{
    fputs(msg, stderr);
    fputc('\n', stderr);
    exit(1);
}

static int is(const char *variant, const char *name) { return strcmp(variant, name) == 0; }

int main(int argc, char *argv[])
{
    if (argc < 2) {
        printf("Usage : %s <port>\n", argv[0]);
        exit(1);
    }
    const char *v = argc > 2 ? argv[2] : "ok";
    int retry = is(v, "retry");
    char msg[] = "Hello World!";
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(atoi(argv[1]));
    int one = 1;

    if (is(v, "bind-before-socket")) {
        /* bind() on a descriptor that socket() has not created yet */
        bind(7, (struct sockaddr *)&addr, sizeof addr);
    }
    int serv = socket(PF_INET, SOCK_STREAM, 0);
    if (serv == -1)
        error_handling("socket() error");
    if (!is(v, "setsockopt-after-bind"))
        setsockopt(serv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (is(v, "listen-before-bind")) {
        if (listen(serv, 5) == -1)
            error_handling("listen() error");
    }
    if (bind(serv, (struct sockaddr *)&addr, sizeof addr) == -1)
        error_handling("bind() error");
    if (is(v, "setsockopt-after-bind"))
        setsockopt(serv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!is(v, "listen-before-bind") && listen(serv, 5) == -1)
        error_handling("listen() error");

    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int clnt;
    do {
        len = sizeof peer;
        clnt = accept(serv, (struct sockaddr *)&peer, &len);
    } while (clnt == -1 && retry && errno == EINTR);
    if (clnt == -1)
        error_handling("accept() error");

    if (is(v, "close-listener-first"))
        close(serv);
    if (is(v, "write-listener") || is(v, "write-dup-listener"))
        signal(SIGPIPE, SIG_IGN); /* write() on a listening TCP socket: EPIPE + SIGPIPE */
    if (is(v, "write-listener"))
        write(serv, msg, sizeof msg); /* wrong descriptor */
    if (is(v, "write-dup-listener")) {
        int copy = dup(serv);
        write(copy, msg, sizeof msg);
        close(copy);
    }
    int out = clnt;
    if (is(v, "dup2")) {
        out = dup2(clnt, 10);
        close(clnt);
    }
    ssize_t n;
    do {
        n = write(out, msg, sizeof msg);
    } while (n == -1 && retry && errno == EINTR);
    if (n != (ssize_t)sizeof msg)
        error_handling("write() error");
    if (retry || is(v, "drain")) {
        char buf[256];
        shutdown(out, SHUT_WR);
        for (;;) {
            n = read(out, buf, sizeof buf);
            if (n == -1 && retry && errno == EINTR)
                continue;
            if (n <= 0)
                break;
        }
    }
    if (is(v, "no-close"))
        return 0;
    close(out);
    if (!is(v, "close-listener-first"))
        close(serv);
    return 0;
}
