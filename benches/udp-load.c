/*
 * udp-load.c: the UDP rows of l4-bench.sh (compiled by it with cc -O2).
 *
 *   udp-load echo PORT
 *       answers every datagram on 127.0.0.1:PORT with itself (the backend).
 *   udp-load load PORT SOCKETS WINDOW SECONDS SIZE
 *       SOCKETS client sockets (each its own session in a proxy), each keeping WINDOW
 *       datagrams of SIZE bytes in flight to 127.0.0.1:PORT: every answer sends the next
 *       one. A socket with no answer for 100 ms (a datagram lost) gets its window again.
 *       Prints the answers received per second over SECONDS.
 *
 * One thread, epoll, plain sendto/recv: the same syscalls per datagram for every target.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static struct sockaddr_in addr_of(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int echo(int port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = addr_of(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("bind"); return 1; }
    static char buf[65536];
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}

static int load(int port, int sockets, int window, double seconds, int size) {
    struct sockaddr_in to = addr_of(port);
    int ep = epoll_create1(0);
    int *fds = calloc(sockets, sizeof *fds);
    double *last = calloc(sockets, sizeof *last);
    char buf[65536];
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < sockets; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (connect(fds[i], (struct sockaddr *)&to, sizeof to) != 0) { perror("connect"); return 1; }
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        for (int w = 0; w < window; w++) send(fds[i], buf, size, 0);
        last[i] = now();
    }
    long answers = 0;
    double start = now(), end = start + seconds, checked = start;
    struct epoll_event events[64];
    while (now() < end) {
        int n = epoll_wait(ep, events, 64, 10);
        for (int e = 0; e < n; e++) {
            int i = events[e].data.u32;
            /* Bounded: at most one window's worth per socket per wake. */
            for (int k = 0; k < window; k++) {
                if (recv(fds[i], buf, sizeof buf, 0) < 0) break;
                answers++;
                last[i] = now();
                send(fds[i], buf, size, 0);
            }
        }
        double t = now();
        if (t - checked > 0.05) {
            checked = t;
            for (int i = 0; i < sockets; i++) {
                if (t - last[i] > 0.1) {
                    for (int w = 0; w < window; w++) send(fds[i], buf, size, 0);
                    last[i] = t;
                }
            }
        }
    }
    printf("%.0f\n", answers / (now() - start));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "echo") == 0) return echo(atoi(argv[2]));
    if (argc == 7 && strcmp(argv[1], "load") == 0)
        return load(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]), atoi(argv[6]));
    fprintf(stderr, "usage: udp-load echo PORT | udp-load load PORT SOCKETS WINDOW SECONDS SIZE\n");
    return 2;
}
