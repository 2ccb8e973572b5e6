/*
 * TURN ChannelData load generator for natkit's benchmark (loopback only by design of the caller).
 *
 * The caller (bench/turn_bench.py) does the TURN handshake in Python: per allocation a UDP socket
 * connected to the server, Allocate and ChannelBind with long-term credentials, the channel bound
 * to the echo peer's socket. It then hands the sockets to this program by fd inheritance:
 *   -c FD:CHANNEL   a client socket and its channel number (repeatable); channel 0 means no
 *                   relay: FD is connected straight to the peer (the direct-RTT baseline)
 *   -p FD           the echo peer's socket (bound to the address every channel is bound to)
 *
 * Client thread (closed loop): every client socket keeps WINDOW ChannelData frames in flight;
 * each echoed frame received triggers one new frame. A socket that hears nothing for 20 ms
 * refills its window after 100 ms of silence (frames lost to full buffers must not shrink
 * the window forever; well above any queueing delay seen here, so no spurious refill).
 * Echo peer thread: each datagram goes back to the address it came from, i.e. to the relay
 * address of its allocation, so a round trip is client → relay → peer → relay → client: two
 * relayed packets.
 *
 * Batching: recvmmsg/sendmmsg move up to 64 datagrams per syscall; both threads sleep in the
 * kernel when idle, so the generator costs far less CPU per round trip than a relay does.
 * The payload carries its send time (ns), so latency needs no per-packet state.
 * Output: one JSON object on stdout, with the process's own CPU time over the measured window.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_CLIENTS 256
#define PAYLOAD 100
#define FRAME_MAX 2048
#define HIST_US 200000 /* latency histogram: 1 us buckets up to 200 ms */

static int nclients = 0, window = 8, peer_fd = -1;
static int fds[MAX_CLIENTS], channels[MAX_CLIENTS];
static uint64_t last_rx[MAX_CLIENTS];
static double duration = 3.0, warmup = 0.5;
static volatile int stopping = 0;
static uint64_t sent, received, bad, refills, echoed, echo_drops;
static uint32_t *hist;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Frame = ChannelData header (absent for channel 0) + payload starting with the send time. */
static size_t make_frame(unsigned char *buf, int channel, uint64_t ts) {
    size_t off = 0;
    if (channel) {
        buf[0] = (unsigned char)(channel >> 8);
        buf[1] = (unsigned char)channel;
        buf[2] = 0;
        buf[3] = PAYLOAD;
        off = 4;
    }
    memset(buf + off, 'x', PAYLOAD);
    memcpy(buf + off, &ts, 8);
    return off + PAYLOAD;
}

/* Send n frames on client i in sendmmsg batches; returns how many the kernel took. */
static int send_frames(int i, int n, int measuring) {
    static unsigned char bufs[BATCH][PAYLOAD + 4];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int total = 0;
    while (n > 0) {
        int k = n < BATCH ? n : BATCH;
        uint64_t ts = now_ns();
        for (int j = 0; j < k; j++) {
            iov[j].iov_base = bufs[j];
            iov[j].iov_len = make_frame(bufs[j], channels[i], ts);
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fds[i], msgs, (unsigned)k, MSG_DONTWAIT);
        if (r <= 0) break;
        if (measuring) sent += (uint64_t)r;
        total += r;
        n -= r;
        if (r < k) break;
    }
    return total;
}

/* Drain client i; returns the number of valid echoes. */
static int receive(int i, int measuring) {
    static unsigned char bufs[BATCH][FRAME_MAX];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    size_t off = channels[i] ? 4 : 0;
    int got = 0;
    for (;;) {
        for (int j = 0; j < BATCH; j++) {
            iov[j].iov_base = bufs[j];
            iov[j].iov_len = FRAME_MAX;
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(fds[i], msgs, BATCH, MSG_DONTWAIT, NULL);
        if (r <= 0) break;
        uint64_t t = now_ns();
        for (int j = 0; j < r; j++) {
            unsigned char *b = bufs[j];
            int ok = msgs[j].msg_len == off + PAYLOAD &&
                     (!off || (b[0] == (channels[i] >> 8) && b[1] == (channels[i] & 0xff) &&
                               b[2] == 0 && b[3] == PAYLOAD));
            if (!ok) {
                if (measuring) bad++;
                continue;
            }
            got++;
            if (!measuring) continue;
            received++;
            uint64_t ts;
            memcpy(&ts, b + off, 8);
            uint64_t us = (t - ts) / 1000;
            hist[us < HIST_US ? us : HIST_US - 1]++;
        }
        if (r < BATCH) break;
    }
    return got;
}

/* The echo peer: every datagram back to its source (the relay address). */
static void *echo_peer(void *arg) {
    (void)arg;
    static unsigned char bufs[BATCH][FRAME_MAX];
    static struct sockaddr_in names[BATCH];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct timeval tv = {.tv_sec = 0, .tv_usec = 20000}; /* wake up to notice `stopping` */
    setsockopt(peer_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (!stopping) {
        for (int j = 0; j < BATCH; j++) {
            iov[j].iov_base = bufs[j];
            iov[j].iov_len = FRAME_MAX;
            memset(&msgs[j], 0, sizeof msgs[j]);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
            msgs[j].msg_hdr.msg_name = &names[j];
            msgs[j].msg_hdr.msg_namelen = sizeof names[j];
        }
        int r = recvmmsg(peer_fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (r <= 0) continue; /* timeout or EINTR */
        for (int j = 0; j < r; j++) iov[j].iov_len = msgs[j].msg_len;
        int done = 0;
        while (done < r) {
            int s = sendmmsg(peer_fd, msgs + done, (unsigned)(r - done), 0);
            if (s <= 0) break;
            done += s;
        }
        echoed += (uint64_t)done;
        echo_drops += (uint64_t)(r - done);
    }
    return NULL;
}

static uint64_t percentile(uint64_t total, double p) {
    uint64_t want = (uint64_t)((double)total * p), acc = 0;
    for (uint64_t us = 0; us < HIST_US; us++) {
        acc += hist[us];
        if (acc > want) return us;
    }
    return HIST_US;
}

static void usage(void) {
    fprintf(stderr, "usage: turnload -p PEER_FD -c FD:CHANNEL [-c ...] [-w WINDOW] "
                    "[-d SECONDS] [-W WARMUP]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "p:c:w:d:W:")) != -1) {
        switch (opt) {
        case 'p': peer_fd = atoi(optarg); break;
        case 'c':
            if (nclients == MAX_CLIENTS || sscanf(optarg, "%d:%d", &fds[nclients],
                                                  &channels[nclients]) != 2)
                usage();
            nclients++;
            break;
        case 'w': window = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        default: usage();
        }
    }
    if (peer_fd < 0 || nclients < 1 || window < 1 || duration <= 0 || duration > 30 ||
        warmup < 0 || warmup > 5)
        usage();
    int big = 4 << 20;
    for (int i = 0; i < nclients; i++) {
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    }
    setsockopt(peer_fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    setsockopt(peer_fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    hist = calloc(HIST_US, sizeof(uint32_t));
    pthread_t peer;
    if (pthread_create(&peer, NULL, echo_peer, NULL) != 0) {
        perror("turnload: thread");
        return 1;
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < nclients; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0) {
            perror("turnload: client fd");
            stopping = 1;
            pthread_join(peer, NULL);
            return 1;
        }
    }
    uint64_t start = now_ns();
    uint64_t measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t end = measure_from + (uint64_t)(duration * 1e9);
    for (int i = 0; i < nclients; i++) {
        send_frames(i, window, 0);
        last_rx[i] = start;
    }
    double cpu_from = -1, cpu_to;
    struct epoll_event evs[MAX_CLIENTS];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        int measuring = t >= measure_from;
        if (measuring && cpu_from < 0) cpu_from = cpu_s();
        int n = epoll_wait(ep, evs, MAX_CLIENTS, 5);
        t = now_ns();
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u32;
            int got = receive(i, measuring);
            if (got > 0) {
                last_rx[i] = t;
                send_frames(i, got, measuring);
            }
        }
        for (int i = 0; i < nclients; i++)
            if (t - last_rx[i] > 100000000ull) { /* 100 ms silence: the window was lost */
                send_frames(i, window, measuring);
                last_rx[i] = t;
                if (measuring) refills++;
            }
    }
    cpu_to = cpu_s();
    if (cpu_from < 0) cpu_from = cpu_to;
    stopping = 1;
    pthread_join(peer, NULL);
    close(ep);
    uint64_t n = received;
    printf("{\"sent\": %llu, \"received\": %llu, \"bad\": %llu, \"refills\": %llu, "
           "\"echoed\": %llu, \"echo_drops\": %llu, \"duration\": %.3f, "
           "\"round_trips_per_s\": %.0f, \"p50_us\": %llu, \"p99_us\": %llu, "
           "\"cpu_share\": %.3f}\n",
           (unsigned long long)sent, (unsigned long long)received, (unsigned long long)bad,
           (unsigned long long)refills, (unsigned long long)echoed,
           (unsigned long long)echo_drops, duration, (double)received / duration,
           (unsigned long long)(n ? percentile(n, 0.50) : 0),
           (unsigned long long)(n ? percentile(n, 0.99) : 0), (cpu_to - cpu_from) / duration);
    return 0;
}
