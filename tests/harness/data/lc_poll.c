/* A non-blocking, poll()-driven one-shot hello server for the LIFE-0 checker's
 * tests: SOCK_NONBLOCK listener, accept4() with flags and EAGAIN, the greeting
 * in several writes, shutdown(SHUT_WR) then a draining read loop with EAGAIN.
 *
 *   lc_poll 4 PORT       IPv4
 *   lc_poll 6 PORT       IPv6 dual-stack (IPV6_V6ONLY = 0, bound to ::)
 *   lc_poll unix PATH    AF_UNIX stream
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void error_handling(const char *msg)
{
    fputs(msg, stderr);
    fputc('\n', stderr);
    exit(1);
}

static void wait_for(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    if (poll(&p, 1, 10000) != 1)
        error_handling("poll() error");
}

int main(int argc, char *argv[])
{
    if (argc != 3) {
        printf("Usage : %s 4|6|unix <port|path>\n", argv[0]);
        exit(1);
    }
    int one = 1, zero = 0, serv;
    if (strcmp(argv[1], "unix") == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        unlink(argv[2]);
        serv = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (serv == -1)
            error_handling("socket() error");
        if (bind(serv, (struct sockaddr *)&a, sizeof a) == -1)
            error_handling("bind() error");
    } else if (strcmp(argv[1], "6") == 0) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = in6addr_any};
        a.sin6_port = htons(atoi(argv[2]));
        serv = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (serv == -1)
            error_handling("socket() error");
        setsockopt(serv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(serv, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(serv, (struct sockaddr *)&a, sizeof a) == -1)
            error_handling("bind() error");
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
        a.sin_port = htons(atoi(argv[2]));
        serv = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (serv == -1)
            error_handling("socket() error");
        setsockopt(serv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(serv, (struct sockaddr *)&a, sizeof a) == -1)
            error_handling("bind() error");
    }
    if (listen(serv, 5) == -1)
        error_handling("listen() error");

    int clnt;
    /* one accept4() before the client arrives: EAGAIN, a legal retry */
    while ((clnt = accept4(serv, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) == -1) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            error_handling("accept() error");
        wait_for(serv, POLLIN);
    }
    const char *parts[] = {"Hello", " World", "!"};
    for (int i = 0; i < 3; i++) {
        wait_for(clnt, POLLOUT);
        if (write(clnt, parts[i], strlen(parts[i])) == -1)
            error_handling("write() error");
    }
    wait_for(clnt, POLLOUT);
    if (send(clnt, "", 1, MSG_NOSIGNAL) != 1) /* the terminating NUL */
        error_handling("write() error");
    shutdown(clnt, SHUT_WR);
    char buf[64];
    for (;;) {
        ssize_t n = recv(clnt, buf, sizeof buf, 0);
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wait_for(clnt, POLLIN);
            continue;
        }
        if (n <= 0)
            break;
    }
    close(clnt);
    close(serv);
    if (strcmp(argv[1], "unix") == 0)
        unlink(argv[2]);
    return 0;
}
