/*
 * stub_server — a blocking one-connection-at-a-time TCP server on a thread,
 * for unit tests of HTTP clients: it reads each request's head and hands the
 * connection and the GET path to the test's serve(fd, path), then closes it. Header-only (static functions) since each
 * test is its own executable.
 */
#ifndef BRIX_TESTS_STUB_SERVER_H
#define BRIX_TESTS_STUB_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct stub_server {
    int lfd, port;
    pthread_t th;
    atomic_int stop;
    void (*serve)(int fd, const char *path);
} stub_server_t;

static void *stub_server_main(void *arg)
{
    stub_server_t *s = arg;
    for (;;) {
        int c = accept(s->lfd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (atomic_load(&s->stop)) {
            close(c);
            break;
        }
        char req[4096], path[256] = "";
        size_t got = 0;
        ssize_t r = 1;
        while (got < sizeof req - 1 && !memmem(req, got, "\r\n\r\n", 4) &&
               (r = recv(c, req + got, sizeof req - 1 - got, 0)) > 0)
            got += (size_t)r;
        req[got] = '\0';
        if (r > 0 && sscanf(req, "GET %255s ", path) == 1)
            s->serve(c, path);
        shutdown(c, SHUT_WR);
        close(c);
    }
    return NULL;
}

/* Listens on 127.0.0.1:0 (s->port gets the port) and starts the thread. */
static int stub_server_start(stub_server_t *s, void (*serve)(int fd, const char *path))
{
    s->serve = serve;
    atomic_store(&s->stop, 0);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    socklen_t al = sizeof a;
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(s->lfd, 16) != 0 || getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->th, NULL, stub_server_main, s);
}

static void stub_server_stop(stub_server_t *s)
{
    atomic_store(&s->stop, 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->port) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    connect(fd, (struct sockaddr *)&a, sizeof a); /* wakes accept() */
    close(fd);
    pthread_join(s->th, NULL);
    close(s->lfd);
}

#endif
