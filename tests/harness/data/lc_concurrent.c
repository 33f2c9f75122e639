/* Concurrent hello servers for the LIFE-0 checker's tests.
 *
 *   lc_concurrent PORT N thread|fork
 *
 * Serves N clients, each on its own thread (pthread) or child process (fork),
 * each connection read until the client's EOF after the greeting, so that
 * several connections are open at once and accept() runs while others are
 * served; then waits for all of them and closes the listener.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void error_handling(const char *msg)
{
    fputs(msg, stderr);
    fputc('\n', stderr);
    exit(1);
}

static void serve(int clnt)
{
    char msg[] = "Hello World!", buf[64];
    if (write(clnt, msg, sizeof msg) != (ssize_t)sizeof msg)
        error_handling("write() error");
    while (read(clnt, buf, sizeof buf) > 0)
        ;
    close(clnt);
}

static void *worker(void *arg)
{
    serve((int)(intptr_t)arg);
    return NULL;
}

int main(int argc, char *argv[])
{
    if (argc != 4) {
        printf("Usage : %s <port> <n> thread|fork\n", argv[0]);
        exit(1);
    }
    int n = atoi(argv[2]);
    int threads = strcmp(argv[3], "thread") == 0;
    int serv = socket(PF_INET, SOCK_STREAM, 0), one = 1;
    if (serv == -1)
        error_handling("socket() error");
    setsockopt(serv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(atoi(argv[1]));
    if (bind(serv, (struct sockaddr *)&addr, sizeof addr) == -1)
        error_handling("bind() error");
    if (listen(serv, 5) == -1)
        error_handling("listen() error");
    pthread_t tids[16];
    pid_t pids[16];
    for (int i = 0; i < n && i < 16; i++) {
        int clnt = accept(serv, NULL, NULL);
        if (clnt == -1)
            error_handling("accept() error");
        if (threads) {
            pthread_create(&tids[i], NULL, worker, (void *)(intptr_t)clnt);
        } else {
            pids[i] = fork();
            if (pids[i] == 0) {
                close(serv);
                serve(clnt);
                _exit(0);
            }
            close(clnt);
        }
    }
    for (int i = 0; i < n && i < 16; i++) {
        if (threads)
            pthread_join(tids[i], NULL);
        else
            waitpid(pids[i], NULL, 0);
    }
    close(serv);
    return 0;
}
