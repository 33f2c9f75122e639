/* A classic hello client with deliberate lifecycle variants, for the LIFE-0
 * checker's tests (tests/harness/test_trace.py).
 *
 *   lc_client IP PORT [VARIANT]
 *
 * VARIANT: ok (default), retry (EINTR-retrying connect/read: ERR-8),
 * read-before-connect, listen, no-close.
 */
#include <arpa/inet.h>
#include <errno.h>
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
    if (argc < 3) {
        printf("Usage : %s <IP> <port>\n", argv[0]);
        exit(1);
    }
    const char *v = argc > 3 ? argv[3] : "ok";
    int retry = is(v, "retry");
    char message[30];
    int sock = socket(PF_INET, SOCK_STREAM, 0);
    if (sock == -1)
        error_handling("socket() error");
    if (is(v, "read-before-connect"))
        read(sock, message, sizeof message); /* fails with ENOTCONN: still out of order */
    if (is(v, "listen")) { /* a client has no business listening, on any socket */
        int extra = socket(PF_INET, SOCK_STREAM, 0);
        listen(extra, 5);
        close(extra);
    }

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = inet_addr(argv[1]);
    addr.sin_port = htons(atoi(argv[2]));
    int rc;
    do {
        rc = connect(sock, (struct sockaddr *)&addr, sizeof addr);
        if (rc == -1 && errno == EISCONN)
            rc = 0;
    } while (rc == -1 && retry && errno == EINTR);
    if (rc == -1)
        error_handling("connect() error!");

    size_t got = 0;
    while (got < 13) {
        ssize_t n = read(sock, message + got, sizeof message - 1 - got);
        if (n == -1 && retry && errno == EINTR)
            continue;
        if (n <= 0)
            error_handling("read() error!");
        got += (size_t)n;
    }
    message[got] = 0;
    printf("Message from server: %s \n", message);
    if (!is(v, "no-close"))
        close(sock);
    return 0;
}
