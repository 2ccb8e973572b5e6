/*
 * STUN Binding load generator for natkit's benchmark (loopback only by design of the caller).
 *
 * Closed loop (default): every socket keeps WINDOW requests outstanding; each response received
 * triggers one new request. A socket that hears nothing for 20 ms refills its window (requests
 * lost to full buffers must not shrink the window forever).
 * Open loop (-r RATE): requests leave on a fixed schedule regardless of responses, so latency is
 * measured without coordinated omission.
 *
 * Batching: recvmmsg/sendmmsg move up to 64 datagrams per syscall and the threads sleep in
 * epoll_wait when idle, so the generator costs far less CPU per request than the servers it
 * drives (the benchmark shows this by saturating coturn with it).
 *
 * The transaction ID carries the send time (ns) so latency needs no per-request state.
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SOCKS 256
#define HIST_US 200000 /* latency histogram: 1 us buckets up to 200 ms */

static struct sockaddr_in server;
static struct sockaddr_in bind_addr;
static int nsocks = 8, window = 32, nthreads = 1;
static double duration = 3.0, warmup = 0.5, rate = 0.0;

struct worker {
    pthread_t tid;
    int first, count;
    int fds[MAX_SOCKS];
    uint64_t last_rx[MAX_SOCKS];
    uint64_t sent, received, bad, refills;
    uint32_t *hist;
    uint64_t hist_over;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void make_request(unsigned char *buf, uint64_t ts, uint32_t seq) {
    buf[0] = 0x00; buf[1] = 0x01; /* Binding request */
    buf[2] = 0x00; buf[3] = 0x00; /* no attributes */
    buf[4] = 0x21; buf[5] = 0x12; buf[6] = 0xA4; buf[7] = 0x42; /* magic cookie */
    memcpy(buf + 8, &ts, 8);
    memcpy(buf + 16, &seq, 4);
}

/* Send n requests on fd in sendmmsg batches; returns how many the kernel took. */
static int send_requests(struct worker *w, int fd, int n, int measuring) {
    unsigned char bufs[BATCH][20];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int total = 0;
    while (n > 0) {
        int k = n < BATCH ? n : BATCH;
        uint64_t ts = now_ns();
        for (int i = 0; i < k; i++) {
            make_request(bufs[i], ts, (uint32_t)(w->sent + (uint64_t)i));
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = 20;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, msgs, (unsigned)k, MSG_DONTWAIT);
        if (r <= 0) break;
        if (measuring) w->sent += (uint64_t)r;
        total += r;
        n -= r;
        if (r < k) break;
    }
    return total;
}

/* Drain fd; returns the number of valid responses. */
static int receive(struct worker *w, int fd, int measuring) {
    unsigned char bufs[BATCH][128];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int got = 0;
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof bufs[i];
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) break;
        uint64_t t = now_ns();
        for (int i = 0; i < r; i++) {
            unsigned char *b = bufs[i];
            if (msgs[i].msg_len < 20 || b[0] != 0x01 || b[1] != 0x01) {
                if (measuring) w->bad++;
                continue;
            }
            got++;
            if (!measuring) continue;
            w->received++;
            uint64_t ts;
            memcpy(&ts, b + 8, 8);
            uint64_t us = (t - ts) / 1000;
            if (us < HIST_US) w->hist[us]++;
            else w->hist_over++;
        }
        if (r < BATCH) break;
    }
    return got;
}

static void *run(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(0);
    for (int i = 0; i < w->count; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, w->fds[i], &ev);
    }
    uint64_t start = now_ns();
    uint64_t measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t end = measure_from + (uint64_t)(duration * 1e9);
    double per_ns = rate > 0 ? rate / nthreads / 1e9 : 0; /* open loop: requests per ns */
    uint64_t open_sent = 0;
    int rr = 0;
    if (rate <= 0)
        for (int i = 0; i < w->count; i++) {
            send_requests(w, w->fds[i], window, 0);
            w->last_rx[i] = start;
        }
    struct epoll_event evs[MAX_SOCKS];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        int measuring = t >= measure_from;
        if (rate > 0) {
            uint64_t due = (uint64_t)((double)(t - start) * per_ns);
            while (open_sent < due) { /* spread across sockets round robin */
                uint64_t n = due - open_sent;
                if (n > BATCH) n = BATCH;
                int s = send_requests(w, w->fds[rr], (int)n, measuring);
                rr = (rr + 1) % w->count;
                open_sent += n; /* a full buffer drops it, as a real network would */
                if (s == 0) break;
            }
        }
        int n = epoll_wait(ep, evs, MAX_SOCKS, rate > 0 ? 1 : 5);
        t = now_ns();
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u32;
            int got = receive(w, w->fds[i], measuring);
            if (got > 0) w->last_rx[i] = t;
            if (rate <= 0 && got > 0) send_requests(w, w->fds[i], got, measuring);
        }
        if (rate <= 0)
            for (int i = 0; i < w->count; i++)
                if (t - w->last_rx[i] > 20000000ull) { /* 20 ms silence: assume the window lost */
                    send_requests(w, w->fds[i], window, measuring);
                    w->last_rx[i] = t;
                    if (measuring) w->refills++;
                }
    }
    close(ep);
    return NULL;
}

static uint64_t percentile(uint32_t *hist, uint64_t over, uint64_t total, double p) {
    uint64_t want = (uint64_t)((double)total * p), acc = 0;
    for (uint64_t us = 0; us < HIST_US; us++) {
        acc += hist[us];
        if (acc > want) return us;
    }
    (void)over;
    return HIST_US;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen -s IP -p PORT [-b BIND_IP] [-n SOURCE_IPS] [-c SOCKETS] "
                    "[-w WINDOW] [-t THREADS] [-d SECONDS] [-W WARMUP] [-r RATE]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *bind_ip = "127.0.0.1";
    int port = 3478, opt, sources = 1;
    while ((opt = getopt(argc, argv, "s:p:b:n:c:w:t:d:W:r:")) != -1) {
        switch (opt) {
        case 's': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'b': bind_ip = optarg; break;
        case 'n': sources = atoi(optarg); break;  /* socket i binds BIND_IP + i % n */
        case 'c': nsocks = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 'r': rate = atof(optarg); break;
        default: usage();
        }
    }
    if (nsocks < 1 || nsocks > MAX_SOCKS || nthreads < 1 || nthreads > nsocks || duration <= 0 ||
        sources < 1 || sources > 250)
        usage();
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)port);
    memset(&bind_addr, 0, sizeof bind_addr);
    bind_addr.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &server.sin_addr) != 1 ||
        inet_pton(AF_INET, bind_ip, &bind_addr.sin_addr) != 1)
        usage();
    struct worker *ws = calloc((size_t)nthreads, sizeof *ws);
    for (int t = 0; t < nthreads; t++) {
        struct worker *w = &ws[t];
        w->first = t * nsocks / nthreads;
        w->count = (t + 1) * nsocks / nthreads - w->first;
        w->hist = calloc(HIST_US, sizeof(uint32_t));
        for (int i = 0; i < w->count; i++) {
            int fd = socket(AF_INET, SOCK_DGRAM, 0);
            int big = 4 << 20;
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
            /* Many client hosts, as a server sees them: natkit steers workers by source IP. */
            struct sockaddr_in from = bind_addr;
            uint32_t host = ntohl(bind_addr.sin_addr.s_addr) + (uint32_t)((w->first + i) % sources);
            from.sin_addr.s_addr = htonl(host);
            if (bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
                connect(fd, (struct sockaddr *)&server, sizeof server) != 0) {
                perror("loadgen: socket");
                return 1;
            }
            w->fds[i] = fd;
        }
    }
    for (int t = 0; t < nthreads; t++) pthread_create(&ws[t].tid, NULL, run, &ws[t]);
    uint64_t sent = 0, received = 0, bad = 0, refills = 0, over = 0;
    uint32_t *hist = calloc(HIST_US, sizeof(uint32_t));
    for (int t = 0; t < nthreads; t++) {
        pthread_join(ws[t].tid, NULL);
        sent += ws[t].sent; received += ws[t].received; bad += ws[t].bad;
        refills += ws[t].refills; over += ws[t].hist_over;
        for (int us = 0; us < HIST_US; us++) hist[us] += ws[t].hist[us];
        for (int i = 0; i < ws[t].count; i++) close(ws[t].fds[i]);
    }
    uint64_t n = received;
    printf("{\"mode\": \"%s\", \"sent\": %llu, \"received\": %llu, \"bad\": %llu, "
           "\"refills\": %llu, \"duration\": %.3f, \"rate\": %.0f, \"p50_us\": %llu, "
           "\"p99_us\": %llu, \"p999_us\": %llu}\n",
           rate > 0 ? "open" : "closed", (unsigned long long)sent, (unsigned long long)received,
           (unsigned long long)bad, (unsigned long long)refills, duration,
           (double)received / duration,
           (unsigned long long)(n ? percentile(hist, over, n, 0.50) : 0),
           (unsigned long long)(n ? percentile(hist, over, n, 0.99) : 0),
           (unsigned long long)(n ? percentile(hist, over, n, 0.999) : 0));
    return 0;
}
