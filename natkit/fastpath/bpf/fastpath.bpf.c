// SPDX-License-Identifier: (MIT OR GPL-2.0)
/* natkit kernel fast path (tc ingress): plain STUN Binding requests answered, TURN ChannelData
 * relayed, both in place; everything else passes up unchanged (TC_ACT_OK) to the user-space
 * server bound to the same ports, which stays the authority.
 *
 * STUN. A UDP datagram (IPv4 without options, or IPv6 without extension headers, not a
 * fragment) to a listener in `natkit_listen`, whose payload is a plain Binding request (RFC
 * 8489: the 20-byte header alone, or with FINGERPRINT only, the CRC right), from a source with a
 * token left in its bucket (`stun.rate_limit`), is turned into its Binding success response:
 * the same transaction ID, XOR-MAPPED-ADDRESS of the source, the listener's suffix
 * (RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE: exactly the bytes user space would send, written by
 * the control plane), FINGERPRINT when the request had one; addresses and ports swapped,
 * lengths and checksums right; then sent back out of the interface it came in on. RFC 5780
 * requests, RESPONSE-PORT, PADDING, TURN requests, RFC 3489, anything malformed go up.
 *
 * TURN (RFC 8656 §12). A peer's datagram to a relayed address with an entry in `natkit_peers`
 * (looked up first: by its first byte a peer's datagram may look like anything) gains a
 * ChannelData header and goes to the client from the listener address; a client's exact
 * ChannelData (not padded) with an entry in `natkit_chans` loses its header and goes to the
 * peer from the relayed address. The builtin engine installs the entries for bound channels and
 * removes them (natkit/fastpath/relay.py); each ends by itself at its `expires_ns`. Both leave
 * by bpf_redirect_neigh on the interface the engine found the route on.
 *
 * Checksums. A datagram sent by a local process (over lo, or a veth from a namespace) is
 * CHECKSUM_PARTIAL: its UDP checksum field holds only the pseudo-header sum and whoever
 * transmits it last completes it. For a Binding the request's own checksum tells which case
 * this is: if it verifies, the answer gets a full checksum; if not, the answer's field gets its
 * pseudo-header sum, which completes the same way (a corrupt request then gets an answer its
 * sender drops). A relayed datagram moves its payload, which a later completion would get wrong
 * (FIELD-NOTES): only one whose checksum verifies is relayed here, with a full new checksum.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define MAGIC_COOKIE 0x2112A442
#define FINGERPRINT_XOR 0x5354554e
#define MAX_SUFFIX 128
#define MAX_PAYLOAD (20 + 24 + MAX_SUFFIX + 8)
#define PAYLOAD_ROOM 256 /* the answer buffer: a power of two above MAX_PAYLOAD */

/* Counters (per CPU, summed by the control plane). */
enum {
	C_ANSWERED_V4,
	C_ANSWERED_V6,
	C_RATE_LIMITED,
	C_PASSED,         /* listener traffic left to user space */
	C_RELAYED_TO_PEER, /* TURN ChannelData relayed to the peer in the kernel */
	C_RELAYED_TO_CLIENT,
	C_COUNT,
};

struct listener_key {
	__u8 family; /* 4 or 6 */
	__u8 pad;
	__be16 port;
	__u8 addr[16]; /* all zero: any address (a wildcard listener) */
};

struct listener {
	__u32 suffix_len; /* a multiple of 4, at most MAX_SUFFIX */
	__u8 suffix[MAX_SUFFIX];
};

struct rate_config {
	__u64 rate;      /* tokens per second; 0: no limit */
	__u64 burst;     /* tokens */
	__u32 owner_pid; /* the natkit serve that attached this program (leftover detection) */
	__u32 pad;
};

struct bucket {
	__u64 nano_tokens; /* tokens x 1e9 */
	__u64 last_ns;
};

/* TURN (RFC 8656 §12): what a client's ChannelData arrives on (its 5-tuple and channel)... */
struct chan_key {
	__u8 family;
	__u8 pad;
	__be16 channel;
	__be16 client_port;
	__be16 local_port;
	__u8 client[16];
	__u8 local[16];
};

/* ...and what a peer's datagram arrives on (the peer and the relayed address). */
struct peer_key {
	__u8 family;
	__u8 pad[3];
	__be16 peer_port;
	__be16 relay_port;
	__u8 peer[16];
	__u8 relay[16];
};

/* Where a relayed datagram goes: from src:sport to dst:dport out of `oif`; `channel` for the
 * ChannelData header towards the client. Installed by the builtin engine for a bound channel,
 * until `expires_ns` (CLOCK_MONOTONIC: the channel's or the permission's end, whichever comes
 * first); the kernel counts what it relayed. */
struct route {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__be16 channel;
	__u16 pad;
	__u32 oif;
	__u32 owner_pid; /* the worker that installed it: its entries go if it dies */
	__u64 expires_ns;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct chan_key);
	__type(value, struct route);
} natkit_chans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct route);
} natkit_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct listener_key);
	__type(value, struct listener);
} natkit_listen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rate_config);
} natkit_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 100000);
	__type(key, __u64); /* IPv4 address, or the /64 of an IPv6 one, as in user space */
	__type(value, struct bucket);
} natkit_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} natkit_counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&natkit_counters, &which);
	if (value)
		*value += 1;
}

static __always_inline int allowed(__u64 key)
{
	__u32 zero = 0;
	struct rate_config *cfg = bpf_map_lookup_elem(&natkit_rate, &zero);
	if (!cfg || !cfg->rate)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 full = cfg->burst * 1000000000ULL;
	struct bucket *b = bpf_map_lookup_elem(&natkit_buckets, &key);
	if (!b) {
		struct bucket fresh = {.nano_tokens = full - 1000000000ULL, .last_ns = now};
		bpf_map_update_elem(&natkit_buckets, &key, &fresh, BPF_ANY);
		return 1;
	}
	__u64 elapsed = now > b->last_ns ? now - b->last_ns : 0;
	if (elapsed > 10000000000ULL) /* 10 s refills any sane bucket; keeps the product small */
		elapsed = 10000000000ULL;
	__u64 tokens = b->nano_tokens + elapsed * cfg->rate;
	if (tokens > full)
		tokens = full;
	b->last_ns = now;
	if (tokens >= 1000000000ULL) {
		b->nano_tokens = tokens - 1000000000ULL;
		return 1;
	}
	b->nano_tokens = tokens;
	return 0;
}

/* CRC-32 (IEEE 802.3, reflected; RFC 8489 §14.7 FINGERPRINT), table-driven. The table is the
 * standard one (entry n: n shifted right through the polynomial 0xedb88320 eight times). */
static const __u32 crc_table[256] = {
	0x00000000, 0x77073096, 0xee0e612c, 0x990951ba, 0x076dc419, 0x706af48f,
	0xe963a535, 0x9e6495a3, 0x0edb8832, 0x79dcb8a4, 0xe0d5e91e, 0x97d2d988,
	0x09b64c2b, 0x7eb17cbd, 0xe7b82d07, 0x90bf1d91, 0x1db71064, 0x6ab020f2,
	0xf3b97148, 0x84be41de, 0x1adad47d, 0x6ddde4eb, 0xf4d4b551, 0x83d385c7,
	0x136c9856, 0x646ba8c0, 0xfd62f97a, 0x8a65c9ec, 0x14015c4f, 0x63066cd9,
	0xfa0f3d63, 0x8d080df5, 0x3b6e20c8, 0x4c69105e, 0xd56041e4, 0xa2677172,
	0x3c03e4d1, 0x4b04d447, 0xd20d85fd, 0xa50ab56b, 0x35b5a8fa, 0x42b2986c,
	0xdbbbc9d6, 0xacbcf940, 0x32d86ce3, 0x45df5c75, 0xdcd60dcf, 0xabd13d59,
	0x26d930ac, 0x51de003a, 0xc8d75180, 0xbfd06116, 0x21b4f4b5, 0x56b3c423,
	0xcfba9599, 0xb8bda50f, 0x2802b89e, 0x5f058808, 0xc60cd9b2, 0xb10be924,
	0x2f6f7c87, 0x58684c11, 0xc1611dab, 0xb6662d3d, 0x76dc4190, 0x01db7106,
	0x98d220bc, 0xefd5102a, 0x71b18589, 0x06b6b51f, 0x9fbfe4a5, 0xe8b8d433,
	0x7807c9a2, 0x0f00f934, 0x9609a88e, 0xe10e9818, 0x7f6a0dbb, 0x086d3d2d,
	0x91646c97, 0xe6635c01, 0x6b6b51f4, 0x1c6c6162, 0x856530d8, 0xf262004e,
	0x6c0695ed, 0x1b01a57b, 0x8208f4c1, 0xf50fc457, 0x65b0d9c6, 0x12b7e950,
	0x8bbeb8ea, 0xfcb9887c, 0x62dd1ddf, 0x15da2d49, 0x8cd37cf3, 0xfbd44c65,
	0x4db26158, 0x3ab551ce, 0xa3bc0074, 0xd4bb30e2, 0x4adfa541, 0x3dd895d7,
	0xa4d1c46d, 0xd3d6f4fb, 0x4369e96a, 0x346ed9fc, 0xad678846, 0xda60b8d0,
	0x44042d73, 0x33031de5, 0xaa0a4c5f, 0xdd0d7cc9, 0x5005713c, 0x270241aa,
	0xbe0b1010, 0xc90c2086, 0x5768b525, 0x206f85b3, 0xb966d409, 0xce61e49f,
	0x5edef90e, 0x29d9c998, 0xb0d09822, 0xc7d7a8b4, 0x59b33d17, 0x2eb40d81,
	0xb7bd5c3b, 0xc0ba6cad, 0xedb88320, 0x9abfb3b6, 0x03b6e20c, 0x74b1d29a,
	0xead54739, 0x9dd277af, 0x04db2615, 0x73dc1683, 0xe3630b12, 0x94643b84,
	0x0d6d6a3e, 0x7a6a5aa8, 0xe40ecf0b, 0x9309ff9d, 0x0a00ae27, 0x7d079eb1,
	0xf00f9344, 0x8708a3d2, 0x1e01f268, 0x6906c2fe, 0xf762575d, 0x806567cb,
	0x196c3671, 0x6e6b06e7, 0xfed41b76, 0x89d32be0, 0x10da7a5a, 0x67dd4acc,
	0xf9b9df6f, 0x8ebeeff9, 0x17b7be43, 0x60b08ed5, 0xd6d6a3e8, 0xa1d1937e,
	0x38d8c2c4, 0x4fdff252, 0xd1bb67f1, 0xa6bc5767, 0x3fb506dd, 0x48b2364b,
	0xd80d2bda, 0xaf0a1b4c, 0x36034af6, 0x41047a60, 0xdf60efc3, 0xa867df55,
	0x316e8eef, 0x4669be79, 0xcb61b38c, 0xbc66831a, 0x256fd2a0, 0x5268e236,
	0xcc0c7795, 0xbb0b4703, 0x220216b9, 0x5505262f, 0xc5ba3bbe, 0xb2bd0b28,
	0x2bb45a92, 0x5cb36a04, 0xc2d7ffa7, 0xb5d0cf31, 0x2cd99e8b, 0x5bdeae1d,
	0x9b64c2b0, 0xec63f226, 0x756aa39c, 0x026d930a, 0x9c0906a9, 0xeb0e363f,
	0x72076785, 0x05005713, 0x95bf4a82, 0xe2b87a14, 0x7bb12bae, 0x0cb61b38,
	0x92d28e9b, 0xe5d5be0d, 0x7cdcefb7, 0x0bdbdf21, 0x86d3d2d4, 0xf1d4e242,
	0x68ddb3f8, 0x1fda836e, 0x81be16cd, 0xf6b9265b, 0x6fb077e1, 0x18b74777,
	0x88085ae6, 0xff0f6a70, 0x66063bca, 0x11010b5c, 0x8f659eff, 0xf862ae69,
	0x616bffd3, 0x166ccf45, 0xa00ae278, 0xd70dd2ee, 0x4e048354, 0x3903b3c2,
	0xa7672661, 0xd06016f7, 0x4969474d, 0x3e6e77db, 0xaed16a4a, 0xd9d65adc,
	0x40df0b66, 0x37d83bf0, 0xa9bcae53, 0xdebb9ec5, 0x47b2cf7f, 0x30b5ffe9,
	0xbdbdf21c, 0xcabac28a, 0x53b39330, 0x24b4a3a6, 0xbad03605, 0xcdd70693,
	0x54de5729, 0x23d967bf, 0xb3667a2e, 0xc4614ab8, 0x5d681b02, 0x2a6f2b94,
	0xb40bbe37, 0xc30c8ea1, 0x5a05df1b, 0x2d02ef8d,
};

struct crc_state {
	const __u8 *buf;
	__u32 len;
	__u32 crc;
};

static long crc_step(__u32 i, void *arg)
{
	struct crc_state *st = arg;
	if (i >= st->len)
		return 1;
	/* buf is PAYLOAD_ROOM (256) bytes: the mask is the bound the verifier can see. */
	st->crc = crc_table[(st->crc ^ st->buf[i & (PAYLOAD_ROOM - 1)]) & 0xff] ^ (st->crc >> 8);
	return 0;
}

/* Over the first `len` bytes of `buf` (PAYLOAD_ROOM bytes, len <= MAX_PAYLOAD): bpf_loop keeps it one callback
 * for the verifier, whatever the length. */
static __always_inline __u32 crc32(const __u8 *buf, __u32 len)
{
	struct crc_state st = {.buf = buf, .len = len, .crc = 0xffffffff};
	bpf_loop(MAX_PAYLOAD, crc_step, &st, 0);
	return ~st.crc;
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)((sum & 0xffff) + (sum >> 16));
}

/* The pseudo-header of RFC 768 / RFC 8200 §8.1, in network order, for bpf_csum_diff. */
struct pseudo4 {
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 zero;
	__u8 proto;
	__be16 len;
};

struct pseudo6 {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__u8 zero[3];
	__u8 proto;
};

/* The one's complement sum (unfolded, native order as bpf_csum_diff keeps it) of the
 * pseudo-header for a UDP datagram of `udp_len` bytes between `src` and `dst`. */
static __always_inline __s64 pseudo_sum(const __u8 *src, const __u8 *dst, __u32 udp_len, int v6)
{
	if (v6) {
		struct pseudo6 ph = {.len = bpf_htonl(udp_len), .proto = IPPROTO_UDP};
		__builtin_memcpy(ph.saddr, src, 16);
		__builtin_memcpy(ph.daddr, dst, 16);
		return bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
	struct pseudo4 ph = {.proto = IPPROTO_UDP, .len = bpf_htons(udp_len)};
	__builtin_memcpy(ph.saddr, src, 4);
	__builtin_memcpy(ph.daddr, dst, 4);
	return bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
}

/* Whether the request payload `req` (`len` bytes: 20, or 28 with FINGERPRINT; a PAYLOAD_ROOM
 * buffer) is a plain Binding request; sets `fingerprint`. */
static __always_inline int plain_binding(const __u8 *req, __u32 len, int *fingerprint)
{
	if (req[0] != 0 || req[1] != 1 || req[4] != 0x21 || req[5] != 0x12 || req[6] != 0xa4 ||
	    req[7] != 0x42)
		return 0;
	if (len == 20) {
		*fingerprint = 0;
		return req[2] == 0 && req[3] == 0;
	}
	if (req[2] != 0 || req[3] != 8 || req[20] != 0x80 || req[21] != 0x28 || req[22] != 0 ||
	    req[23] != 4)
		return 0;
	__u32 want = crc32(req, 20) ^ FINGERPRINT_XOR;
	__u32 got = (__u32)req[24] << 24 | (__u32)req[25] << 16 | (__u32)req[26] << 8 | req[27];
	*fingerprint = 1;
	return want == got;
}

struct segment {
	__u8 udp[8];
	__u8 payload[PAYLOAD_ROOM]; /* the request's payload, then the answer's */
	__u8 slack[8];              /* what the verifier's rounded bounds may reach past it */
};

/* Scratch room for one segment per CPU: too large for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct segment);
} natkit_scratch SEC(".maps");

/* The answer's payload, written over the request's in seg->payload (the cookie and the
 * transaction ID stay where they are): its length, or 0. `src` is the requester's address (4
 * or 16 bytes), `sport` its port in network order. */
static __always_inline __u32 build(struct segment *seg, const __u8 *src, int v6, __be16 sport,
				   const struct listener *l, int fingerprint)
{
	__u8 *out = seg->payload;
	const __u8 *req = seg->payload;
	__u32 xma = v6 ? 20 : 8;
	__u32 suffix = l->suffix_len;
	if (suffix > MAX_SUFFIX)
		return 0;
	__u32 len = 24 + xma + suffix;
	__u32 body = len - 20 + (fingerprint ? 8 : 0);
	out[0] = 0x01;
	out[1] = 0x01;
	out[2] = body >> 8;
	out[3] = body & 0xff;
	out[20] = 0x00;
	out[21] = 0x20; /* XOR-MAPPED-ADDRESS (RFC 8489 §14.2) */
	out[22] = 0;
	out[23] = xma;
	out[24] = 0;
	out[25] = v6 ? 2 : 1;
	__u16 port = bpf_ntohs(sport) ^ (MAGIC_COOKIE >> 16);
	out[26] = port >> 8;
	out[27] = port & 0xff;
	/* X-Address: the address XORed with the cookie, then (IPv6) with the transaction ID. */
	if (v6) {
		for (int i = 0; i < 16; i++)
			out[28 + i] = src[i] ^ req[4 + i];
	} else {
		for (int i = 0; i < 4; i++)
			out[28 + i] = src[i] ^ req[4 + i];
	}
	/* All of the suffix buffer, whatever its length: a constant size the verifier can see;
	 * what lies beyond `len` is not sent (or is overwritten by FINGERPRINT). */
	__builtin_memcpy(out + 24 + xma, l->suffix, MAX_SUFFIX);
	if (fingerprint) {
		if (len + 8 > MAX_PAYLOAD)
			return 0;
		__u32 crc = crc32(out, len) ^ FINGERPRINT_XOR;
		__u32 at = len & (PAYLOAD_ROOM - 1);
		if (at > PAYLOAD_ROOM - 8)
			return 0;
		out[at] = 0x80;
		out[at + 1] = 0x28;
		out[at + 2] = 0;
		out[at + 3] = 4;
		out[at + 4] = crc >> 24;
		out[at + 5] = crc >> 16;
		out[at + 6] = crc >> 8;
		out[at + 7] = crc;
		len += 8;
	}
	return len;
}

#define CHUNK 256
#define RELAY_MAX (6 * CHUNK) /* longer datagrams go to user space */

/* The one's complement sum (unfolded, as bpf_csum_diff keeps it) of `len` bytes at `off`,
 * through the scratch buffer `buf` (PAYLOAD_ROOM bytes) in chunks; -1 if it cannot. An odd
 * tail is summed with a zero byte after it (RFC 1071). */
static __always_inline __s64 bytes_sum(struct __sk_buff *skb, __u32 off, __u32 len, __u8 *buf)
{
	__s64 sum = 0;
	if (len > RELAY_MAX)
		return -1;
	for (int i = 0; i < 6; i++) {
		__u32 done = i * CHUNK;
		if (done >= len)
			break;
		__u32 n = len - done;
		if (n > CHUNK)
			n = CHUNK;
		asm volatile("" : "+r"(n)); /* keep the mask below: it is the bound the verifier sees */
		n &= 2 * CHUNK - 1;
		if (n == 0 || n > CHUNK)
			break;
		if (n < CHUNK)
			__builtin_memset(buf, 0, CHUNK);
		if (bpf_skb_load_bytes(skb, off + done, buf, n) < 0)
			return -1;
		sum = bpf_csum_diff(0, 0, (__be32 *)buf, (n + 3) & ~3U, sum);
		if (sum < 0)
			return -1;
	}
	return sum;
}

struct relay_header {
	struct udphdr udp;
	__u8 channel_data[4]; /* towards the client: RFC 8656 §12.4 */
};

/* Relay the datagram (UDP header `uh` at `l4`, from `src` to `dst`) per `r`: towards the client
 * it gains a ChannelData header, towards the peer it loses one (`cd`, already checked). Only a
 * datagram whose checksum verifies is taken (header comment: a CHECKSUM_PARTIAL one would be
 * completed at the old offsets after the move), so the new checksum is complete too. Returns
 * the tc verdict, or -1 to leave the datagram to user space untouched. */
static __always_inline int relay(struct __sk_buff *skb, __u32 l3, __u32 l4, int v6,
				 const struct udphdr *uh, const __u8 *src, const __u8 *dst,
				 const __u8 *cd, struct route *r, int to_client,
				 struct segment *seg)
{
	__u32 udp_len = bpf_ntohs(uh->len);
	if (udp_len < (to_client ? 8 : 12) || skb->len < l4 + udp_len)
		return -1;
	if (bpf_ktime_get_ns() >= r->expires_ns)
		return -1; /* the channel or the permission ended: user space decides */
	__u32 data_off = l4 + (to_client ? 8 : 12);
	__u32 data_len = udp_len - (to_client ? 8 : 12);
	__s64 data = bytes_sum(skb, data_off, data_len, seg->payload);
	if (data < 0)
		return -1;
	__s64 sum = pseudo_sum(src, dst, udp_len, v6);
	if (sum >= 0)
		sum = bpf_csum_diff(0, 0, (__be32 *)uh, sizeof(*uh), sum);
	if (sum >= 0 && !to_client)
		sum = bpf_csum_diff(0, 0, (__be32 *)cd, 4, sum);
	if (sum < 0 || (uh->check == 0 && v6))
		return -1;
	if (uh->check != 0 && fold((__u64)sum + (__u64)data) != 0xffff)
		return -1;

	__u32 new_len = to_client ? udp_len + 4 : udp_len - 4;
	struct relay_header h = {};
	h.udp.source = r->sport;
	h.udp.dest = r->dport;
	h.udp.len = bpf_htons(new_len);
	if (to_client) {
		__u16 channel = bpf_ntohs(r->channel);
		h.channel_data[0] = channel >> 8;
		h.channel_data[1] = channel & 0xff;
		h.channel_data[2] = data_len >> 8;
		h.channel_data[3] = data_len & 0xff;
	}
	__s64 fresh = pseudo_sum(r->src, r->dst, new_len, v6);
	if (fresh >= 0)
		fresh = bpf_csum_diff(0, 0, (__be32 *)&h, to_client ? 12 : 8, fresh);
	if (fresh < 0)
		return -1;
	__u16 check = ~fold((__u64)fresh + (__u64)data);
	h.udp.check = check ? check : 0xffff;
	if (to_client) {
		__u32 mtu = 0;
		if (bpf_check_mtu(skb, r->oif, &mtu, 4, 0) != 0)
			return -1; /* over the MTU with the header: user space (or fragments) */
	}
	if (bpf_skb_adjust_room(skb, to_client ? 4 : -4, BPF_ADJ_ROOM_NET, 0) < 0)
		return -1; /* nothing changed */
	if (bpf_skb_store_bytes(skb, l4, &h, to_client ? 12 : 8, 0) < 0)
		return TC_ACT_SHOT; /* half rewritten: never let it go up */
	if (v6) {
		__be16 payload_len = bpf_htons(new_len);
		__u8 hops = 64;
		if (bpf_skb_store_bytes(skb, l3 + 8, r->src, 16, 0) < 0 ||
		    bpf_skb_store_bytes(skb, l3 + 24, r->dst, 16, 0) < 0 ||
		    bpf_skb_store_bytes(skb, l3 + 4, &payload_len, 2, 0) < 0 ||
		    bpf_skb_store_bytes(skb, l3 + 7, &hops, 1, 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
			return TC_ACT_SHOT;
		__builtin_memcpy(&ip.saddr, r->src, 4);
		__builtin_memcpy(&ip.daddr, r->dst, 4);
		ip.tot_len = bpf_htons(20 + new_len);
		ip.ttl = 64;
		ip.check = 0;
		__s64 ipsum = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
		if (ipsum < 0)
			return TC_ACT_SHOT;
		ip.check = ~fold(ipsum);
		if (bpf_skb_store_bytes(skb, l3, &ip, sizeof(ip), 0) < 0)
			return TC_ACT_SHOT;
	}
	__sync_fetch_and_add(&r->packets, 1);
	__sync_fetch_and_add(&r->bytes, data_len);
	count(to_client ? C_RELAYED_TO_CLIENT : C_RELAYED_TO_PEER);
	return bpf_redirect_neigh(r->oif, 0, 0, 0);
}

/* A datagram to UDP at offset `l4`, IP addresses at `saddr_off`/`daddr_off` (`alen` bytes). */
static __always_inline int serve(struct __sk_buff *skb, __u32 l3, __u32 l4, int v6)
{
	struct udphdr uh;
	__u8 src[16] = {}, dst[16] = {};
	__u32 zero = 0;
	struct segment *seg = bpf_map_lookup_elem(&natkit_scratch, &zero);
	int fingerprint = 0;
	if (!seg)
		return TC_ACT_OK;
	__u32 alen = v6 ? 16 : 4;
	__u32 saddr_off = v6 ? l3 + 8 : l3 + 12;

	if (bpf_skb_load_bytes(skb, l4, &uh, sizeof(uh)) < 0)
		return TC_ACT_OK;
	struct listener_key key = {.family = v6 ? 6 : 4, .port = uh.dest};
	if (v6) {
		if (bpf_skb_load_bytes(skb, saddr_off, src, 16) < 0 ||
		    bpf_skb_load_bytes(skb, saddr_off + 16, dst, 16) < 0)
			return TC_ACT_OK;
	} else {
		if (bpf_skb_load_bytes(skb, saddr_off, src, 4) < 0 ||
		    bpf_skb_load_bytes(skb, saddr_off + 4, dst, 4) < 0)
			return TC_ACT_OK;
	}
	/* A peer's datagram to a relayed address first: by its first byte it may look like STUN
	 * or ChannelData (FIELD-NOTES: 1 in 16 would be misrouted). */
	struct peer_key pk = {.family = key.family, .peer_port = uh.source, .relay_port = uh.dest};
	__builtin_memcpy(pk.peer, src, 16);
	__builtin_memcpy(pk.relay, dst, 16);
	struct route *to_client = bpf_map_lookup_elem(&natkit_peers, &pk);
	if (to_client) {
		int verdict = relay(skb, l3, l4, v6, &uh, src, dst, 0, to_client, 1, seg);
		return verdict < 0 ? TC_ACT_OK : verdict;
	}
	__builtin_memcpy(key.addr, dst, 16);
	struct listener *l = bpf_map_lookup_elem(&natkit_listen, &key);
	if (!l) {
		__builtin_memset(key.addr, 0, 16);
		l = bpf_map_lookup_elem(&natkit_listen, &key);
		if (!l)
			return TC_ACT_OK; /* not natkit's */
	}
	__u32 udp_len = bpf_ntohs(uh.len);
	__u32 len = udp_len - 8;
	__u8 cd[4];
	if (udp_len >= 12 && bpf_skb_load_bytes(skb, l4 + 8, cd, 4) == 0 && cd[0] >= 0x40 &&
	    cd[0] <= 0x4f) {
		/* ChannelData: relayed in the kernel when the channel is bound here and the frame
		 * is exact (a padded one, RFC 8656 §12.5, goes up). */
		__u32 length = (__u32)cd[2] << 8 | cd[3];
		struct chan_key ck = {.family = key.family, .client_port = uh.source,
				      .local_port = uh.dest};
		ck.channel = (__be16)(cd[0] | (__u16)cd[1] << 8);
		__builtin_memcpy(ck.client, src, 16);
		__builtin_memcpy(ck.local, dst, 16);
		struct route *to_peer = bpf_map_lookup_elem(&natkit_chans, &ck);
		if (to_peer && length + 12 == udp_len) {
			int verdict = relay(skb, l3, l4, v6, &uh, src, dst, cd, to_peer, 0, seg);
			if (verdict >= 0)
				return verdict;
		}
		goto up;
	}
	if ((len != 20 && len != 28) || skb->len < l4 + udp_len || !uh.source)
		goto up;
	__u8 *req = seg->payload;
	if (len == 20) {
		if (bpf_skb_load_bytes(skb, l4 + 8, req, 20) < 0)
			goto up;
	} else if (bpf_skb_load_bytes(skb, l4 + 8, req, 28) < 0) {
		goto up;
	}
	if (!plain_binding(req, len, &fingerprint))
		goto up;

	/* The same bucket key as user space: the IPv4 address, or the IPv6 /64. */
	__u64 bucket = 0;
	if (v6)
		__builtin_memcpy(&bucket, src, 8);
	else
		bucket = (__u64)src[0] << 24 | (__u64)src[1] << 16 | (__u64)src[2] << 8 | src[3];
	if (!allowed(bucket)) {
		count(C_RATE_LIMITED);
		return TC_ACT_SHOT; /* as user space drops it: no answer, no ICMP */
	}

	/* Does the request's checksum verify (a complete checksum), or is it partial? */
	int complete = !v6 && uh.check == 0; /* IPv4 "no checksum": ours is complete */
	if (uh.check) {
		__s64 sum = pseudo_sum(src, dst, udp_len, v6);
		if (sum >= 0)
			sum = bpf_csum_diff(0, 0, (__be32 *)&uh, sizeof(uh), sum);
		if (sum >= 0)
			sum = len == 20 ? bpf_csum_diff(0, 0, (__be32 *)req, 20, sum)
					: bpf_csum_diff(0, 0, (__be32 *)req, 28, sum);
		complete = sum >= 0 && fold(sum) == 0xffff;
	}

	__u32 alen_payload = build(seg, src, v6, uh.source, l, fingerprint);
	if (!alen_payload || alen_payload > MAX_PAYLOAD)
		goto up;
	__u32 seg_len = 8 + alen_payload;
	if (seg_len < 40 || seg_len > sizeof(*seg))
		goto up;
	struct udphdr *out = (struct udphdr *)seg->udp;
	out->source = uh.dest;
	out->dest = uh.source;
	out->len = bpf_htons(seg_len);
	out->check = 0;
	__s64 pseudo = pseudo_sum(dst, src, seg_len, v6);
	if (pseudo < 0)
		goto up;
	if (complete) {
		__s64 sum = bpf_csum_diff(0, 0, (__be32 *)seg, seg_len, pseudo);
		if (sum < 0)
			goto up;
		__u16 check = ~fold(sum);
		out->check = check ? check : 0xffff;
	} else {
		out->check = fold(pseudo); /* completed by whoever transmits it (header comment) */
	}

	if (bpf_skb_change_tail(skb, l4 + seg_len, 0) < 0)
		goto up;
	if (bpf_skb_store_bytes(skb, l4, seg, seg_len, 0) < 0)
		return TC_ACT_SHOT; /* half rewritten: never let it go up */
	/* Swap the addresses, set the lengths, and the IPv4 header checksum. */
	if (bpf_skb_store_bytes(skb, saddr_off, dst, alen, 0) < 0 ||
	    bpf_skb_store_bytes(skb, saddr_off + alen, src, alen, 0) < 0)
		return TC_ACT_SHOT;
	if (v6) {
		__be16 payload_len = bpf_htons(seg_len);
		__u8 hops = 64;
		if (bpf_skb_store_bytes(skb, l3 + 4, &payload_len, 2, 0) < 0 ||
		    bpf_skb_store_bytes(skb, l3 + 7, &hops, 1, 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
			return TC_ACT_SHOT;
		ip.tot_len = bpf_htons(20 + seg_len);
		ip.ttl = 64;
		ip.check = 0;
		ip.frag_off = 0;
		__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
		if (sum < 0)
			return TC_ACT_SHOT;
		ip.check = ~fold(sum);
		if (bpf_skb_store_bytes(skb, l3, &ip, sizeof(ip), 0) < 0)
			return TC_ACT_SHOT;
	}
	/* Back where it came from: swap the Ethernet addresses. */
	__u8 macs[12];
	if (bpf_skb_load_bytes(skb, 0, macs, 12) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, macs + 6, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, macs, 6, 0) < 0)
		return TC_ACT_SHOT;
	count(v6 ? C_ANSWERED_V6 : C_ANSWERED_V4);
	return bpf_redirect(skb->ifindex, 0);
up:
	count(C_PASSED);
	return TC_ACT_OK;
}

SEC("tc")
int natkit_stun(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
		/* No options, not a fragment (MF or an offset): user space reassembles. */
		if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
			return TC_ACT_OK;
		return serve(skb, sizeof(*eth), sizeof(*eth) + sizeof(*ip), 0);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		if (ip6->nexthdr != IPPROTO_UDP) /* extension headers: user space */
			return TC_ACT_OK;
		return serve(skb, sizeof(*eth), sizeof(*eth) + sizeof(*ip6), 1);
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
