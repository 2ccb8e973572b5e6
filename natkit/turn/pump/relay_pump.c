/* natkit's native relay pump: ChannelData of bound IPv4 UDP channels relayed in user space in C.
 *
 * The builtin TURN engine keeps the state (natkit.turn.relay); this file only moves datagrams
 * along routes the engine installed, the same entries the kernel fast path gets
 * (natkit.turn.kernel_channels): each ends by itself at expires_ns on CLOCK_MONOTONIC.
 *
 *   to peer:   key (listener fd, client IPv4, client port, channel) -> relay fd, peer sockaddr
 *   to client: key (relay fd, peer IPv4, peer port)                 -> listener fd, client
 *                                                                      sockaddr, channel
 *
 * pump_to_peers works on a batch the listener already read with recvmmsg (Python owns the
 * listener); pump_from_peer reads a relay socket with recvmmsg into the caller's batch, and
 * pump_poll does that for every relay socket that is ready (the pump's epoll set: the event
 * loop watches one fd for all of them, and Python runs once per round, not once per socket).
 * They mark in `handled` what they relayed; everything else (a STUN message, a padded or
 * unbound frame, an expired route) is left to the engine's Python path, which decides as
 * before.
 * Remote input is hostile: a frame is relayed only when its ChannelData length is exactly the
 * datagram's (RFC 8656 section 12.5: no padding over UDP) and its key was installed; nothing
 * here allocates per packet. The table is open addressing with linear probing and backward
 * shift deletion, keyed with a per-pump random seed, at most half full.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TO_PEER 0
#define TO_CLIENT 1
#define MAX_SENDS 64
#define MAX_EVENTS 64
#define READS_PER_SOCKET 16 /* recvmmsg calls on one socket per round: one peer cannot starve */

struct key {
    uint32_t fd;      /* the socket the datagram arrived on */
    uint32_t ip;      /* its source, network order */
    uint16_t port;    /* network order */
    uint16_t channel; /* host order; 0 on the way to a client */
    uint32_t dir;
};

struct entry {
    struct key key;
    int used;
    int fd_out;
    struct sockaddr_in dst;
    uint16_t channel; /* network order, for the ChannelData header to a client */
    uint64_t expires_ns;
    uint64_t packets, bytes;
};

struct pump {
    struct entry *slots;
    uint32_t mask, count;
    uint64_t seed;
    uint64_t dropped; /* datagrams a send did not take (full buffer, ICMP error) */
    struct mmsghdr sends[MAX_SENDS];
    struct iovec iov[MAX_SENDS][2];
    uint8_t headers[MAX_SENDS][4];
    int epfd; /* the relay sockets pump_poll serves */
    struct epoll_event events[MAX_EVENTS];
    int nevents, next, reads; /* the current round: ready sockets, the one being read, reads */
};

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint32_t slot_of(const struct pump *p, const struct key *k) {
    uint64_t a = ((uint64_t)k->fd << 32 | k->ip) ^ p->seed;
    uint64_t b = (uint64_t)k->port << 32 | (uint64_t)k->channel << 16 | k->dir;
    return (uint32_t)(mix(mix(a) ^ b) & p->mask);
}

static int same(const struct key *a, const struct key *b) {
    return a->fd == b->fd && a->ip == b->ip && a->port == b->port && a->channel == b->channel &&
           a->dir == b->dir;
}

static struct entry *find(const struct pump *p, const struct key *k) {
    for (uint32_t i = slot_of(p, k);; i = (i + 1) & p->mask) {
        struct entry *e = &p->slots[i];
        if (!e->used)
            return NULL;
        if (same(&e->key, k))
            return e;
    }
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

struct pump *pump_new(uint64_t seed, uint32_t capacity) {
    struct pump *p = calloc(1, sizeof *p);
    uint32_t size = 64;
    if (p == NULL)
        return NULL;
    while (size < 2 * capacity && size < (1u << 30))
        size <<= 1;
    p->slots = calloc(size, sizeof *p->slots);
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->slots == NULL || p->epfd < 0) {
        if (p->epfd >= 0)
            close(p->epfd);
        free(p->slots);
        free(p);
        return NULL;
    }
    p->mask = size - 1;
    p->seed = mix(seed);
    return p;
}

void pump_free(struct pump *p) {
    if (p != NULL) {
        close(p->epfd);
        free(p->slots);
        free(p);
    }
}

static int grow(struct pump *p) {
    uint32_t size = (p->mask + 1) * 2;
    struct entry *old = p->slots, *slots;
    uint32_t old_size = p->mask + 1;
    if (size == 0 || size > (1u << 30) || (slots = calloc(size, sizeof *slots)) == NULL)
        return -1;
    p->slots = slots;
    p->mask = size - 1;
    for (uint32_t i = 0; i < old_size; i++) {
        if (!old[i].used)
            continue;
        uint32_t j = slot_of(p, &old[i].key);
        while (p->slots[j].used)
            j = (j + 1) & p->mask;
        p->slots[j] = old[i];
    }
    free(old);
    return 0;
}

/* Install or refresh one direction of a route (addresses and ports in network order): 0, or -1
 * when the table cannot grow (the Python path keeps relaying it). A refresh keeps the counts. */
int pump_set(struct pump *p, int dir, int fd_in, uint32_t ip, uint32_t port, uint32_t channel,
             int fd_out, uint32_t dst_ip, uint32_t dst_port, uint64_t expires_ns) {
    struct key k = {(uint32_t)fd_in, ip, (uint16_t)port, dir == TO_PEER ? (uint16_t)channel : 0,
                    (uint32_t)dir};
    struct entry *e = find(p, &k);
    if (e == NULL) {
        if (2 * (p->count + 1) > p->mask + 1 && grow(p) != 0)
            return -1;
        uint32_t i = slot_of(p, &k);
        while (p->slots[i].used)
            i = (i + 1) & p->mask;
        e = &p->slots[i];
        memset(e, 0, sizeof *e);
        e->key = k;
        e->used = 1;
        p->count++;
    }
    e->fd_out = fd_out;
    e->dst.sin_family = AF_INET;
    e->dst.sin_addr.s_addr = dst_ip;
    e->dst.sin_port = (uint16_t)dst_port;
    e->channel = htons((uint16_t)channel);
    e->expires_ns = expires_ns;
    return 0;
}

/* Remove one direction of a route; its counts go with it (read them first). 1 if it was there. */
int pump_del(struct pump *p, int dir, int fd_in, uint32_t ip, uint32_t port, uint32_t channel) {
    struct key k = {(uint32_t)fd_in, ip, (uint16_t)port, dir == TO_PEER ? (uint16_t)channel : 0,
                    (uint32_t)dir};
    struct entry *e = find(p, &k);
    if (e == NULL)
        return 0;
    uint32_t hole = (uint32_t)(e - p->slots);
    p->slots[hole].used = 0;
    p->count--;
    /* Backward shift: move up every later entry of the run that may live in the hole. */
    for (uint32_t i = (hole + 1) & p->mask; p->slots[i].used; i = (i + 1) & p->mask) {
        uint32_t home = slot_of(p, &p->slots[i].key);
        if (((i - home) & p->mask) >= ((i - hole) & p->mask)) {
            p->slots[hole] = p->slots[i];
            p->slots[i].used = 0;
            hole = i;
        }
    }
    return 1;
}

/* The (packets, bytes) one direction of a route relayed so far, into out[0..1]; 0 if absent. */
int pump_counts(const struct pump *p, int dir, int fd_in, uint32_t ip, uint32_t port,
                uint32_t channel, uint64_t *out) {
    struct key k = {(uint32_t)fd_in, ip, (uint16_t)port, dir == TO_PEER ? (uint16_t)channel : 0,
                    (uint32_t)dir};
    const struct entry *e = find(p, &k);
    if (e == NULL)
        return 0;
    out[0] = e->packets;
    out[1] = e->bytes;
    return 1;
}

uint64_t pump_dropped(const struct pump *p) { return p->dropped; }

uint32_t pump_size(const struct pump *p) { return p->count; }

/* Send the n queued datagrams on fd; a datagram the kernel refuses is dropped (UDP may). */
static void flush(struct pump *p, int fd, unsigned n) {
    unsigned sent = 0;
    while (sent < n) {
        int r = sendmmsg(fd, p->sends + sent, n - sent, MSG_DONTWAIT);
        if (r > 0) {
            sent += (unsigned)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            p->dropped++; /* the first of the rest failed: skip it, try the others */
            sent++;
        }
    }
}

static void queue(struct pump *p, unsigned j, struct entry *e, void *head, size_t head_len,
                  void *body, size_t body_len) {
    struct msghdr *h = &p->sends[j].msg_hdr;
    unsigned parts = 0;
    if (head_len) {
        p->iov[j][parts].iov_base = head;
        p->iov[j][parts++].iov_len = head_len;
    }
    p->iov[j][parts].iov_base = body;
    p->iov[j][parts++].iov_len = body_len;
    memset(h, 0, sizeof *h);
    h->msg_name = &e->dst;
    h->msg_namelen = sizeof e->dst;
    h->msg_iov = p->iov[j];
    h->msg_iovlen = parts;
}

/* Client to peer: the n datagrams of a listener's recvmmsg batch (fd: that listener). Relays
 * each exact ChannelData of an installed, live route from its relay socket and marks it in
 * handled[i]; returns how many it relayed. */
int pump_to_peers(struct pump *p, int fd, struct mmsghdr *msgs, int n, uint8_t *handled) {
    uint64_t now = now_ns();
    unsigned queued = 0;
    int out_fd = -1, done = 0;
    for (int i = 0; i < n; i++) {
        struct msghdr *m = &msgs[i].msg_hdr;
        uint8_t *data = m->msg_iov[0].iov_base;
        unsigned size = msgs[i].msg_len;
        const struct sockaddr_in *src = m->msg_name;
        handled[i] = 0;
        if (size < 4 || (data[0] & 0xC0) != 0x40 || m->msg_namelen != sizeof *src ||
            src->sin_family != AF_INET || (m->msg_flags & MSG_TRUNC) ||
            ((unsigned)data[2] << 8 | data[3]) != size - 4)
            continue;
        struct key k = {(uint32_t)fd, src->sin_addr.s_addr, src->sin_port,
                        (uint16_t)(data[0] << 8 | data[1]), TO_PEER};
        struct entry *e = find(p, &k);
        if (e == NULL || e->expires_ns <= now)
            continue;
        if (queued && (e->fd_out != out_fd || queued == MAX_SENDS)) {
            flush(p, out_fd, queued);
            queued = 0;
        }
        out_fd = e->fd_out;
        queue(p, queued++, e, NULL, 0, data + 4, size - 4);
        e->packets++;
        e->bytes += size - 4;
        handled[i] = 1;
        done++;
    }
    if (queued)
        flush(p, out_fd, queued);
    return done;
}

/* Peer to client: read the relay socket fd into msgs (at most cap datagrams, each slot's iovec
 * and name set by the caller) and relay each datagram of an installed, live route to its
 * client as ChannelData from the listener. Returns read + 256 * relayed (read 0: nothing was
 * waiting), or -errno. handled[i] marks what was relayed. */
int pump_from_peer(struct pump *p, int fd, struct mmsghdr *msgs, int cap, uint8_t *handled) {
    int n, done = 0, out_fd = -1;
    unsigned queued = 0;
    if (cap > MAX_SENDS)
        cap = MAX_SENDS;
    n = recvmmsg(fd, msgs, (unsigned)cap, MSG_DONTWAIT, NULL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    uint64_t now = now_ns();
    for (int i = 0; i < n; i++) {
        struct msghdr *m = &msgs[i].msg_hdr;
        const struct sockaddr_in *src = m->msg_name;
        unsigned size = msgs[i].msg_len;
        handled[i] = 0;
        if (m->msg_namelen != sizeof *src || src->sin_family != AF_INET ||
            (m->msg_flags & MSG_TRUNC) || size > 65535 - 4)
            continue;
        struct key k = {(uint32_t)fd, src->sin_addr.s_addr, src->sin_port, 0, TO_CLIENT};
        struct entry *e = find(p, &k);
        if (e == NULL || e->expires_ns <= now)
            continue;
        if (queued && e->fd_out != out_fd) {
            flush(p, out_fd, queued);
            queued = 0;
        }
        out_fd = e->fd_out;
        uint8_t *head = p->headers[queued];
        memcpy(head, &e->channel, 2);
        head[2] = (uint8_t)(size >> 8);
        head[3] = (uint8_t)size;
        queue(p, queued++, e, head, 4, m->msg_iov[0].iov_base, size);
        e->packets++;
        e->bytes += size;
        handled[i] = 1;
        done++;
    }
    if (queued)
        flush(p, out_fd, queued);
    return n + 256 * done;
}

int pump_epoll_fd(const struct pump *p) { return p->epfd; }

/* Add the relay socket fd to what pump_poll serves: 0 or -errno. */
int pump_watch(struct pump *p, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : -errno;
}

/* Remove fd (before it is closed: its number may be reused at once), also from the round in
 * progress: 0 or -errno. */
int pump_unwatch(struct pump *p, int fd) {
    for (int i = p->next; i < p->nevents; i++)
        if (p->events[i].data.fd == fd)
            p->events[i].data.fd = -1;
    return epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

/* Read and relay what the ready relay sockets hold, at most `budget` recvmmsg calls. Returns 0
 * when no socket is ready, -1 when the budget is spent (the epoll fd stays readable: the loop
 * calls again), else what pump_from_peer returned for the socket *fd_out, whose unrelayed
 * datagrams (handled[i] == 0) the caller takes before calling again. Errors on one socket
 * (ICMP from earlier sends) move on to the next. */
int pump_poll(struct pump *p, struct mmsghdr *msgs, int cap, uint8_t *handled, int32_t *fd_out,
              int budget) {
    if (cap > MAX_SENDS)
        cap = MAX_SENDS;
    while (budget-- > 0) {
        if (p->next >= p->nevents) {
            p->next = p->reads = 0;
            p->nevents = epoll_wait(p->epfd, p->events, MAX_EVENTS, 0);
            if (p->nevents <= 0) {
                p->nevents = 0;
                return 0;
            }
        }
        int fd = p->events[p->next].data.fd;
        int r = fd < 0 ? 0 : pump_from_peer(p, fd, msgs, cap, handled);
        int n = r > 0 ? r & 255 : 0;
        if (n < cap || ++p->reads >= READS_PER_SOCKET) { /* drained, or its share of the round */
            p->next++;
            p->reads = 0;
        }
        if (n && (r >> 8) < n) {
            *fd_out = fd;
            return r;
        }
    }
    return -1;
}
