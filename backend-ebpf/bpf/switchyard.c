// SPDX-License-Identifier: GPL-2.0
/* switchyard's eBPF dataplane.
 *
 * swy_tc_ingress (TC ingress, clsact or TCX, on every node interface):
 *   1. connection tracking: a packet of a known flow is translated as its
 *      first packet was (forward: DNAT + optional SNAT; reverse: the reply
 *      gets the frontend back as source and the client as destination);
 *   2. a new flow to a frontend (swy_svc) is classified by source (node,
 *      pod = cluster CIDR, external), checked against
 *      loadBalancerSourceRanges, and routed as the plan says: forward to a
 *      backend (random, Maglev or the session-affinity choice), reject
 *      (TCP RST / ICMP port unreachable sent back at once) or drop; its
 *      source port moves when the backend may still hold that tuple;
 *   3. the SYN of a connection to no frontend is noted (swy_seen), or moved
 *      off a tuple a translated flow still holds.
 * swy_tc_egress (TC egress, packets the node sends): reverse NAT of
 *   host-network endpoints' replies; SNAT of node processes' Service
 *   connections when the plan masquerades node traffic.
 * swy_connect4/6, swy_sendmsg4/6 (cgroup): host-network clients get the
 *   backend written into the socket address; swy_recvmsg4/6 and
 *   swy_getpeername4/6 show the frontend again.
 *
 * Minimum kernel: 5.10 for the programs (bpf_redirect_neigh 5.10,
 * bpf_get_netns_cookie in sock_addr programs 5.7, bounded loops 5.3);
 * bpf_set_retval (ECONNREFUSED from connect) needs 5.18.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "switchyard.h"

/* linux/icmp.h pulls in glibc headers that do not build for -target bpf. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

#define ECONNREFUSED 111
#define ETIMEDOUT 110

char LICENSE[] SEC("license") = "GPL";

/* Default sizes; the loader sets the configured ones (aya map_max_entries). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct swy_svc_key);
	__type(value, struct swy_svc_val);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_svc SEC(".maps");

/* No prealloc: an update replaces the element under RCU, so a reader sees
 * the old or the new (generation, count), never a mix. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct swy_route_val);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_route SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct swy_backend_key);
	__type(value, struct swy_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_backend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct swy_maglev_key);
	__type(value, struct swy_maglev_val);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct swy_ct_key);
	__type(value, struct swy_ct_val);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_ct SEC(".maps");

/* Reply tuples (backend side) of connections that pass untranslated, by
 * the time of their SYN: a new translated flow must not take a tuple the
 * backend may still use (netfilter knows them from its conntrack). Only
 * SYNs write here; an eviction loses a hint, never a connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct swy_ct_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct swy_aff_key);
	__type(value, struct swy_aff_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct swy_addr);
	__type(value, __u32);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_node_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct swy_lpm_key);
	__type(value, __u32);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct swy_srcrange_key);
	__type(value, __u32);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_srcrange SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct swy_sock_key);
	__type(value, struct swy_sock_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct swy_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SWY_STATS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} swy_stats SEC(".maps");

static __always_inline void stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&swy_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct swy_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&swy_config, &zero);
}

static __always_inline void addr_v4(struct swy_addr *a, __u32 ip)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = ip;
}

static __always_inline int addr_eq(const struct swy_addr *a, const struct swy_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

static __always_inline int addr_zero(const struct swy_addr *a)
{
	return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]);
}

static __always_inline __u32 mix(__u32 h, __u32 v)
{
	h ^= v;
	h *= 0x01000193;
	return h;
}

static __always_inline __u32 tuple_hash(const struct swy_ct_key *t)
{
	__u32 h = 0x811c9dc5;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = mix(h, t->src.w[i]);
		h = mix(h, t->dst.w[i]);
	}
	h = mix(h, ((__u32)t->sport << 16) | t->dport);
	h = mix(h, t->proto);
	return h ^ (h >> 15);
}

static __always_inline int source_class(const struct swy_addr *src)
{
	__u32 *na = bpf_map_lookup_elem(&swy_node_addrs, src);
	if (na && (*na & SWY_NODE_ADDR))
		return SWY_CLASS_NODE;
	struct swy_lpm_key k = {.prefixlen = 128, .addr = *src};
	if (bpf_map_lookup_elem(&swy_cidrs, &k))
		return SWY_CLASS_POD;
	return SWY_CLASS_EXTERNAL;
}

static __always_inline int is_node_addr(const struct swy_addr *a)
{
	__u32 *na = bpf_map_lookup_elem(&swy_node_addrs, a);
	return na && (*na & SWY_NODE_ADDR);
}

#define NSEC 1000000000ULL
/* Linux keeps a closed connection in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN). */
#define SWY_TIME_WAIT_NS (65 * NSEC)
/* An established TCP flow idle for this long is forgotten (kube-proxy sets
 * netfilter's established timeout to a day). */
#define SWY_TCP_IDLE_NS (86400 * NSEC)

/* Whether no packet will use this entry again, so that its tuple may go to
 * a new flow: UDP idle past the timeout, TCP closed for longer than the
 * peers' TIME_WAIT, or TCP idle for a day. */
static __always_inline int ct_dead(const struct swy_ct_val *v, __u8 proto, __u64 now, const struct swy_config *cfg)
{
	__u64 idle = now - v->last_ns;
	if (proto != IPPROTO_TCP) /* UDP, SCTP: idle timeout */
		return idle > (__u64)cfg->udp_timeout_s * NSEC;
	if (v->flags & SWY_CT_CLOSING)
		return idle > SWY_TIME_WAIT_NS;
	return idle > SWY_TCP_IDLE_NS;
}

/* Whether an untranslated connection used the reply tuple `rk` recently
 * enough that the backend may still hold it (open, or in TIME_WAIT). */
static __always_inline int seen_recently(const struct swy_ct_key *rk, __u64 now)
{
	__u64 *t = bpf_map_lookup_elem(&swy_seen, rk);
	return t && now - *t <= SWY_TIME_WAIT_NS;
}

/* Picks a source port in [snat_port_min, snat_port_max] for the reply
 * tuple `rk` (rk->dst is the new source address) that no live flow holds,
 * and sets rk->dport. 0 on success. The range lies outside the kernel's
 * ephemeral ports, so it never meets the node's own connections. When every
 * probe is taken, a closed flow's port is reused rather than dropping the
 * packet (at worst the backend's TIME_WAIT answers the first SYN). */
static __always_inline int pick_port(struct swy_ct_key *rk, __u32 h, __u64 now, const struct swy_config *cfg)
{
	__u32 lo = cfg->snat_port_min, range = cfg->snat_port_max - cfg->snat_port_min + 1;
	__u16 fallback = 0;
	if (range == 0 || range > 65535)
		range = 1;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u16 port = bpf_htons((__u16)(lo + (h + i * 7919) % range));
		rk->dport = port;
		struct swy_ct_val *e = bpf_map_lookup_elem(&swy_ct, rk);
		if ((!e || ct_dead(e, rk->proto, now, cfg)) && !seen_recently(rk, now))
			return 0;
		if (!fallback && e && (e->flags & SWY_CT_CLOSING))
			fallback = port;
	}
	if (!fallback)
		return -1;
	rk->dport = fallback;
	return 0;
}

static __always_inline struct swy_svc_val *lookup_frontend(const struct swy_addr *dst, __u16 dport, __u8 proto)
{
	struct swy_svc_key k = {};
	k.addr = *dst;
	k.port = dport;
	k.proto = proto;
	k.scope = SWY_SCOPE_ADDR;
	struct swy_svc_val *v = bpf_map_lookup_elem(&swy_svc, &k);
	if (v)
		return v;
	__u32 *na = bpf_map_lookup_elem(&swy_node_addrs, dst);
	if (!na || !(*na & SWY_NODE_NODEPORT))
		return NULL;
	/* Node ports are keyed by the family's unspecified address
	 * (::ffff:0.0.0.0 or ::), so that v4 and v6 ports do not collide. */
	int v4 = dst->w[0] == 0 && dst->w[1] == 0 && dst->w[2] == bpf_htonl(0xffff);
	__builtin_memset(&k.addr, 0, sizeof(k.addr));
	if (v4)
		k.addr.w[2] = bpf_htonl(0xffff);
	k.scope = SWY_SCOPE_NODEPORT;
	return bpf_map_lookup_elem(&swy_svc, &k);
}

/* Picks a backend of a forwarding route. Session affinity first (when the
 * remembered backend is still in its slot and the timeout has not passed),
 * then Maglev or random. Returns 0 when `out` is set. */
static __always_inline int select_backend(const struct swy_svc_val *svc, __u64 route_id, const struct swy_route_val *route,
					  const struct swy_addr *client, __u32 hash, struct swy_backend *out)
{
	__u64 now = bpf_ktime_get_ns();
	struct swy_backend_key bk = {.route = route_id, .generation = route->generation};
	struct swy_aff_key ak = {};
	struct swy_backend *be;
	__u32 slot;

	if (route->count == 0)
		return -1;
	if (svc->affinity_timeout) {
		ak.route = route_id;
		ak.client = *client;
		struct swy_aff_val *av = bpf_map_lookup_elem(&swy_affinity, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_timeout * 1000000000ULL) {
			bk.slot = av->slot;
			be = bpf_map_lookup_elem(&swy_backend, &bk);
			if (be && addr_eq(&be->addr, &av->backend.addr) && be->port == av->backend.port) {
				av->last_ns = now;
				*out = *be;
				return 0;
			}
		}
	}
	if (route->flags & SWY_ROUTE_MAGLEV) {
		struct swy_maglev_key mk = {.route = route_id, .generation = route->generation};
		struct swy_maglev_val *mv = bpf_map_lookup_elem(&swy_maglev, &mk);
		if (!mv)
			return -1;
		__u32 idx = hash % SWY_MAGLEV_M;
		/* clang's mul/sub lowering of % loses the bound: restate it. */
		asm volatile("" : "+r"(idx));
		if (idx >= SWY_MAGLEV_M)
			return -1;
		slot = mv->slot[idx];
	} else {
		slot = bpf_get_prandom_u32() % route->count;
	}
	bk.slot = slot;
	be = bpf_map_lookup_elem(&swy_backend, &bk);
	if (!be) {
		stat(SWY_STAT_NO_BACKEND);
		return -1;
	}
	*out = *be;
	if (svc->affinity_timeout) {
		struct swy_aff_val av = {.backend = *be, .slot = slot, .last_ns = now};
		bpf_map_update_elem(&swy_affinity, &ak, &av, BPF_ANY);
	}
	return 0;
}

/* ---------------------------------------------------------------- TC --- */

struct pkt {
	struct swy_ct_key t;
	__u32 l4_off;
	__u32 csum_off; /* absolute offset of the L4 checksum */
	__u8 v6;
	__u8 tcp_flags;
	__u8 csum_flags; /* 0: no L4 checksum to fix (IPv4 UDP with checksum 0) */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return -1;
		/* IP options and fragments are passed untouched. */
		if (ip.ihl != 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		p->t.proto = ip.protocol;
		addr_v4(&p->t.src, ip.saddr);
		addr_v4(&p->t.dst, ip.daddr);
		p->l4_off = ETH_HLEN + sizeof(struct iphdr);
		p->v6 = 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		/* Extension headers are not followed: such packets pass. */
		p->t.proto = ip6.nexthdr;
		__builtin_memcpy(&p->t.src, &ip6.saddr, 16);
		__builtin_memcpy(&p->t.dst, &ip6.daddr, 16);
		p->l4_off = ETH_HLEN + sizeof(struct ipv6hdr);
		p->v6 = 1;
	} else {
		return -1;
	}
	if (p->t.proto == IPPROTO_TCP) {
		__u8 th[14];
		if (bpf_skb_load_bytes(skb, p->l4_off, th, sizeof(th)))
			return -1;
		__builtin_memcpy(&p->t.sport, &th[0], 2);
		__builtin_memcpy(&p->t.dport, &th[2], 2);
		p->tcp_flags = th[13];
		p->csum_off = p->l4_off + 16;
		p->csum_flags = 0;
		return 0;
	}
	if (p->t.proto == IPPROTO_SCTP) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return -1;
		p->t.sport = ports[0];
		p->t.dport = ports[1];
		/* SCTP's CRC32c covers no address (no pseudo-header): address
		 * translation needs no fix. It does cover the ports, which we
		 * therefore never change (render skips SCTP frontends whose
		 * endpoints use another port; SNAT keeps the client's port). */
		p->csum_off = p->l4_off + 8;
		p->csum_flags = 0xff;
		return 0;
	}
	if (p->t.proto == IPPROTO_UDP) {
		struct udphdr uh;
		if (bpf_skb_load_bytes(skb, p->l4_off, &uh, sizeof(uh)))
			return -1;
		p->t.sport = uh.source;
		p->t.dport = uh.dest;
		p->csum_off = p->l4_off + 6;
		p->csum_flags = BPF_F_MARK_MANGLED_0;
		if (!p->v6 && uh.check == 0)
			p->csum_flags = 0xff; /* no checksum */
		return 0;
	}
	return -1;
}

static __always_inline int l4_csum_on(const struct pkt *p)
{
	return p->csum_flags != 0xff;
}

/* Rewrites the source or destination address, fixing the L3 (IPv4) and L4
 * (pseudo-header) checksums. */
static __always_inline int set_addr(struct __sk_buff *skb, const struct pkt *p, int src, const struct swy_addr *old,
				    const struct swy_addr *new)
{
	if (addr_eq(old, new))
		return 0;
	if (!p->v6) {
		__u32 o = old->w[3], n = new->w[3];
		__u32 off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
		if (l4_csum_on(p) && bpf_l4_csum_replace(skb, p->csum_off, o, n, BPF_F_PSEUDO_HDR | p->csum_flags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), o, n, 4))
			return -1;
		return bpf_skb_store_bytes(skb, off, &n, 4, 0);
	}
	__u32 off = ETH_HLEN + (src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
	struct swy_addr o = *old, n = *new;
	__s64 diff = bpf_csum_diff((__be32 *)o.w, 16, (__be32 *)n.w, 16, 0);
	if (bpf_l4_csum_replace(skb, p->csum_off, 0, diff, BPF_F_PSEUDO_HDR | (p->csum_flags & BPF_F_MARK_MANGLED_0)))
		return -1;
	return bpf_skb_store_bytes(skb, off, n.w, 16, 0);
}

static __always_inline int set_port(struct __sk_buff *skb, const struct pkt *p, int src, __u16 old, __u16 new)
{
	if (old == new)
		return 0;
	if (p->t.proto == IPPROTO_SCTP)
		return -1; /* would break the CRC32c (see parse) */
	if (l4_csum_on(p) && bpf_l4_csum_replace(skb, p->csum_off, old, new, p->csum_flags | 2))
		return -1;
	return bpf_skb_store_bytes(skb, p->l4_off + (src ? 0 : 2), &new, 2, 0);
}

static __always_inline __u16 csum_fold(__s64 s)
{
	__u32 c = (__u32)s;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

static __always_inline int swap_macs(struct __sk_buff *skb)
{
	__u8 mac[12], sw[12];
	if (bpf_skb_load_bytes(skb, 0, mac, 12))
		return -1;
	__builtin_memcpy(sw, mac + 6, 6);
	__builtin_memcpy(sw + 6, mac, 6);
	return bpf_skb_store_bytes(skb, 0, sw, 12, 0);
}

struct tcp_rst {
	__be16 source, dest;
	__be32 seq, ack_seq;
	__u8 doff_res;
	__u8 flags;
	__be16 window, check, urg;
};

static __always_inline int make_rst(struct __sk_buff *skb, const struct pkt *p, __u32 l3_len, struct tcp_rst *rst)
{
	struct tcphdr th;
	if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)))
		return -1;
	if (th.rst)
		return -1;
	__u32 plen = l3_len - th.doff * 4;
	__builtin_memset(rst, 0, sizeof(*rst));
	rst->source = th.dest;
	rst->dest = th.source;
	rst->doff_res = 5 << 4;
	if (th.ack) {
		rst->seq = th.ack_seq;
		rst->flags = TCP_RST;
	} else {
		rst->ack_seq = bpf_htonl(bpf_ntohl(th.seq) + plen + th.syn + th.fin);
		rst->flags = TCP_RST | TCP_ACK;
	}
	return 0;
}

/* Answers the packet with a TCP RST or an ICMP port unreachable, sent back
 * out of the interface it came in on, so that the client sees "refused". */
static __always_inline int reject4(struct __sk_buff *skb, const struct pkt *p)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return TC_ACT_SHOT;
	struct iphdr nip = {};
	nip.version = 4;
	nip.ihl = 5;
	nip.ttl = 64;
	nip.frag_off = bpf_htons(0x4000);
	nip.saddr = ip.daddr;
	nip.daddr = ip.saddr;
	if (p->t.proto == IPPROTO_TCP) {
		struct tcp_rst rst;
		if (make_rst(skb, p, bpf_ntohs(ip.tot_len) - sizeof(ip), &rst))
			return TC_ACT_SHOT;
		nip.protocol = IPPROTO_TCP;
		nip.tot_len = bpf_htons(sizeof(nip) + sizeof(rst));
		nip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&nip, sizeof(nip), 0));
		struct {
			__be32 s, d;
			__u8 z, proto;
			__be16 len;
		} ph = {nip.saddr, nip.daddr, 0, IPPROTO_TCP, bpf_htons(sizeof(rst))};
		__s64 cs = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
		cs = bpf_csum_diff(NULL, 0, (__be32 *)&rst, sizeof(rst), cs);
		rst.check = csum_fold(cs);
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip) + sizeof(rst), 0))
			return TC_ACT_SHOT;
		if (swap_macs(skb) || bpf_skb_store_bytes(skb, ETH_HLEN, &nip, sizeof(nip), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip), &rst, sizeof(rst), 0))
			return TC_ACT_SHOT;
	} else {
		struct {
			struct icmphdr ic;
			struct iphdr orig;
			__u8 l4[8];
		} body = {};
		body.orig = ip;
		if (bpf_skb_load_bytes(skb, p->l4_off, body.l4, 8))
			return TC_ACT_SHOT;
		body.ic.type = ICMP_DEST_UNREACH;
		body.ic.code = ICMP_PORT_UNREACH;
		body.ic.checksum = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&body, sizeof(body), 0));
		nip.protocol = IPPROTO_ICMP;
		nip.tot_len = bpf_htons(sizeof(nip) + sizeof(body));
		nip.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&nip, sizeof(nip), 0));
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip) + sizeof(body), 0))
			return TC_ACT_SHOT;
		if (swap_macs(skb) || bpf_skb_store_bytes(skb, ETH_HLEN, &nip, sizeof(nip), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip), &body, sizeof(body), 0))
			return TC_ACT_SHOT;
	}
	stat(SWY_STAT_REJECT);
	return bpf_redirect(skb->ifindex, 0);
}

struct pseudo6 {
	struct swy_addr s, d;
	__be32 len;
	__u8 z[3];
	__u8 nh;
};

static __always_inline int reject6(struct __sk_buff *skb, const struct pkt *p)
{
	struct ipv6hdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return TC_ACT_SHOT;
	struct ipv6hdr nip = {};
	nip.version = 6;
	nip.hop_limit = 64;
	nip.saddr = ip.daddr;
	nip.daddr = ip.saddr;
	struct pseudo6 ph = {};
	__builtin_memcpy(&ph.s, &nip.saddr, 16);
	__builtin_memcpy(&ph.d, &nip.daddr, 16);
	if (p->t.proto == IPPROTO_TCP) {
		struct tcp_rst rst;
		if (make_rst(skb, p, bpf_ntohs(ip.payload_len), &rst))
			return TC_ACT_SHOT;
		nip.nexthdr = IPPROTO_TCP;
		nip.payload_len = bpf_htons(sizeof(rst));
		ph.len = bpf_htonl(sizeof(rst));
		ph.nh = IPPROTO_TCP;
		__s64 cs = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
		cs = bpf_csum_diff(NULL, 0, (__be32 *)&rst, sizeof(rst), cs);
		rst.check = csum_fold(cs);
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip) + sizeof(rst), 0))
			return TC_ACT_SHOT;
		if (swap_macs(skb) || bpf_skb_store_bytes(skb, ETH_HLEN, &nip, sizeof(nip), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip), &rst, sizeof(rst), 0))
			return TC_ACT_SHOT;
	} else {
		struct {
			struct icmp6hdr ic;
			struct ipv6hdr orig;
			__u8 l4[8];
		} body = {};
		body.orig = ip;
		if (bpf_skb_load_bytes(skb, p->l4_off, body.l4, 8))
			return TC_ACT_SHOT;
		body.ic.icmp6_type = ICMPV6_DEST_UNREACH;
		body.ic.icmp6_code = ICMPV6_PORT_UNREACH;
		nip.nexthdr = IPPROTO_ICMPV6;
		nip.payload_len = bpf_htons(sizeof(body));
		ph.len = bpf_htonl(sizeof(body));
		ph.nh = IPPROTO_ICMPV6;
		__s64 cs = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
		cs = bpf_csum_diff(NULL, 0, (__be32 *)&body, sizeof(body), cs);
		body.ic.icmp6_cksum = csum_fold(cs);
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(nip) + sizeof(body), 0))
			return TC_ACT_SHOT;
		if (swap_macs(skb) || bpf_skb_store_bytes(skb, ETH_HLEN, &nip, sizeof(nip), 0) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(nip), &body, sizeof(body), 0))
			return TC_ACT_SHOT;
	}
	stat(SWY_STAT_REJECT);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline __u8 closing_flag(const struct pkt *p)
{
	return (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST))) ? SWY_CT_CLOSING : 0;
}

#define AF_INET 2
#define AF_INET6 10

/* Sends a translated packet on its way: a FIB lookup on its new addresses,
 * then out of the right interface with the neighbour filled in. Routing
 * input is bypassed on purpose: after SNAT (or reverse NAT of a NodePort)
 * the source is one of the node's own addresses, which ip_rcv would drop
 * as martian. Not forwardable here (a local destination): the stack takes it. */
static __always_inline int forward(struct __sk_buff *skb, const struct pkt *p, const struct swy_addr *src,
				   const struct swy_addr *dst)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = p->t.proto;
	if (p->v6) {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, src->w, 16);
		__builtin_memcpy(fib.ipv6_dst, dst->w, 16);
	} else {
		fib.family = AF_INET;
		fib.ipv4_src = src->w[3];
		fib.ipv4_dst = dst->w[3];
	}
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	return TC_ACT_OK;
}

/* Applies a conntrack entry to the packet and forwards it. */
static __always_inline int apply_ct(struct __sk_buff *skb, const struct pkt *p, const struct swy_ct_val *ct)
{
	if (ct->dir == SWY_CT_FORWARD) {
		if (set_addr(skb, p, 0, &p->t.dst, &ct->nat) || set_port(skb, p, 0, p->t.dport, ct->nat_port))
			return TC_ACT_SHOT;
		if (ct->flags & SWY_CT_SNAT) {
			if (set_addr(skb, p, 1, &p->t.src, &ct->nat2) || set_port(skb, p, 1, p->t.sport, ct->nat2_port))
				return TC_ACT_SHOT;
		}
		stat(SWY_STAT_DNAT);
		return forward(skb, p, (ct->flags & SWY_CT_SNAT) ? &ct->nat2 : &p->t.src, &ct->nat);
	}
	if (set_addr(skb, p, 1, &p->t.src, &ct->nat) || set_port(skb, p, 1, p->t.sport, ct->nat_port))
		return TC_ACT_SHOT;
	if (ct->flags & SWY_CT_SNAT) {
		if (set_addr(skb, p, 0, &p->t.dst, &ct->nat2) || set_port(skb, p, 0, p->t.dport, ct->nat2_port))
			return TC_ACT_SHOT;
	}
	stat(SWY_STAT_REVNAT);
	return forward(skb, p, &ct->nat, (ct->flags & SWY_CT_SNAT) ? &ct->nat2 : &p->t.dst);
}

/* The SYN of a connection to no frontend. Its reply tuple is noted in
 * swy_seen (so that new translated flows keep off it). When a translated
 * flow still claims that tuple (open, or closed less than TIME_WAIT ago),
 * the backend may still hold it: like netfilter's null binding, the new
 * connection gets another source port (else its SYN meets the old
 * connection, and its SYN-ACK would be reverse-NATed to the old frontend).
 * A dead translated flow just gives the tuple up. */
static __always_inline int untranslated_syn(struct __sk_buff *skb, const struct pkt *p, __u64 now,
					    const struct swy_config *cfg)
{
	struct swy_ct_key rk = {.src = p->t.dst, .dst = p->t.src, .sport = p->t.dport, .dport = p->t.sport,
				.proto = p->t.proto};
	struct swy_ct_val *e = bpf_map_lookup_elem(&swy_ct, &rk);
	if (e && e->dir == SWY_CT_REVERSE) {
		if (!ct_dead(e, p->t.proto, now, cfg)) {
			if (pick_port(&rk, tuple_hash(&p->t), now, cfg)) {
				stat(SWY_STAT_SNAT_EXHAUSTED);
				return TC_ACT_UNSPEC;
			}
			struct swy_ct_val fwd = {.nat = p->t.dst, .nat_port = p->t.dport, .nat2 = p->t.src,
						 .nat2_port = rk.dport, .dir = SWY_CT_FORWARD, .flags = SWY_CT_SNAT,
						 .last_ns = now};
			struct swy_ct_val rev = {.nat = p->t.dst, .nat_port = p->t.dport, .nat2 = p->t.src,
						 .nat2_port = p->t.sport, .dir = SWY_CT_REVERSE, .flags = SWY_CT_SNAT,
						 .last_ns = now};
			if (bpf_map_update_elem(&swy_ct, &rk, &rev, BPF_ANY) ||
			    bpf_map_update_elem(&swy_ct, &p->t, &fwd, BPF_ANY)) {
				stat(SWY_STAT_CT_INSERT_FAILED);
				return TC_ACT_UNSPEC;
			}
			stat(SWY_STAT_PORT_REMAP);
			return apply_ct(skb, p, &fwd);
		}
		bpf_map_delete_elem(&swy_ct, &rk);
		stat(SWY_STAT_CT_TAKEOVER);
	}
	bpf_map_update_elem(&swy_seen, &rk, &now, BPF_ANY);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int swy_tc_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p))
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	struct swy_config *cfg = config();
	if (!cfg)
		return TC_ACT_UNSPEC;

	struct swy_ct_val *ctp = bpf_map_lookup_elem(&swy_ct, &p.t);
	if (ctp) {
		int stale = 0;
		if (ctp->dir == SWY_CT_FORWARD) {
			if (p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
			    (ctp->flags & SWY_CT_CLOSING))
				stale = 1;
			if (p.t.proto != IPPROTO_TCP && now - ctp->last_ns > (__u64)cfg->udp_timeout_s * NSEC)
				stale = 1;
		}
		if (!stale) {
			ctp->last_ns = now;
			ctp->flags |= closing_flag(&p);
			struct swy_ct_val ct = *ctp;
			return apply_ct(skb, &p, &ct);
		}
	}

	struct swy_svc_val *svc = lookup_frontend(&p.t.dst, p.t.dport, p.t.proto);
	if (!svc) {
		/* Not ours: the next TC program (or the stack) decides; a SYN
		 * is noted first (untranslated_syn). */
		if (p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
			return untranslated_syn(skb, &p, now, cfg);
		return TC_ACT_UNSPEC;
	}
	int class = source_class(&p.t.src);
	if ((svc->ranges >> class) & 1) {
		struct swy_srcrange_key sk = {.prefixlen = 64 + 128, .addr = p.t.src};
		__builtin_memcpy(sk.id, &svc->id, 8);
		if (!bpf_map_lookup_elem(&swy_srcrange, &sk)) {
			stat(SWY_STAT_SOURCE_RANGE_DROP);
			return TC_ACT_SHOT;
		}
	}
	__u64 route_id = svc->route[class];
	struct swy_route_val *route = bpf_map_lookup_elem(&swy_route, &route_id);
	if (!route || route->verdict == SWY_DROP) {
		stat(SWY_STAT_DROP);
		return TC_ACT_SHOT;
	}
	if (route->verdict == SWY_REJECT)
		return p.v6 ? reject6(skb, &p) : reject4(skb, &p);

	struct swy_backend be;
	if (select_backend(svc, route_id, route, &p.t.src, tuple_hash(&p.t), &be)) {
		stat(SWY_STAT_DROP);
		return TC_ACT_SHOT;
	}

	struct swy_ct_val fwd = {.nat = be.addr, .nat_port = be.port, .dir = SWY_CT_FORWARD, .last_ns = now,
				 .route = route_id};
	struct swy_ct_val rev = {.nat = p.t.dst, .nat_port = p.t.dport, .nat2 = p.t.src, .nat2_port = p.t.sport,
				 .dir = SWY_CT_REVERSE, .last_ns = now, .route = route_id};
	struct swy_ct_key rk = {.src = be.addr, .dst = p.t.src, .sport = be.port, .dport = p.t.sport,
				.proto = p.t.proto};

	/* Masquerade as the flow table says, and for hairpin (an endpoint of
	 * the table's hairpin set reaching itself). Never towards the node itself (a host-network endpoint):
	 * its reply to a node address would stay on lo, where no TC program
	 * can undo the NAT; the reply to the client is reverse-NATed at egress. */
	int snat = 0;
	if (!is_node_addr(&be.addr) && (((svc->masq >> class) & 1) ||
					   ((be.flags & SWY_BACKEND_HAIRPIN) && addr_eq(&be.addr, &p.t.src)))) {
		struct swy_addr masq = p.v6 ? cfg->snat6 : cfg->snat4;
		if (!addr_zero(&masq)) {
			rk.dst = masq;
			snat = 1;
		}
	}
	if (!snat && p.t.proto != IPPROTO_SCTP) {
		/* Keep the client's port unless another flow holds the
		 * backend-side tuple: the same client port reached this backend
		 * through another frontend (or directly) a moment ago, and the
		 * backend may still hold that connection in TIME_WAIT, answering
		 * our SYN with a challenge ACK (a retransmit 10+ ms later). Like
		 * netfilter's null binding, move the source port then. */
		struct swy_ct_val *e = bpf_map_lookup_elem(&swy_ct, &rk);
		int ours = e && e->dir == SWY_CT_REVERSE && addr_eq(&e->nat, &p.t.dst) && e->nat_port == p.t.dport &&
			   addr_eq(&e->nat2, &p.t.src) && e->nat2_port == p.t.sport;
		if ((e && !ours && !ct_dead(e, p.t.proto, now, cfg)) || (!ours && seen_recently(&rk, now))) {
			snat = 1;
			stat(SWY_STAT_PORT_REMAP);
		}
	}
	if (snat) {
		/* SCTP keeps the client's port (its CRC32c covers ports); its
		 * verification tags tell associations apart at the endpoint. */
		if (p.t.proto != IPPROTO_SCTP && pick_port(&rk, tuple_hash(&p.t), now, cfg)) {
			stat(SWY_STAT_SNAT_EXHAUSTED);
			return TC_ACT_SHOT;
		}
		fwd.nat2 = rk.dst;
		fwd.nat2_port = rk.dport;
		fwd.flags |= SWY_CT_SNAT;
		rev.flags |= SWY_CT_SNAT;
	}
	if (bpf_map_update_elem(&swy_ct, &rk, &rev, BPF_ANY) || bpf_map_update_elem(&swy_ct, &p.t, &fwd, BPF_ANY)) {
		stat(SWY_STAT_CT_INSERT_FAILED);
		return TC_ACT_SHOT;
	}
	return apply_ct(skb, &p, &fwd);
}

/* SNAT at egress for a connection a node process opened to a frontend:
 * the socket hooks already put the backend in its destination, and left
 * SWY_SOCK_MASQ on the socket when the plan masquerades node traffic
 * (kube-proxy does this in POSTROUTING). The reply comes back through TC
 * ingress, where the reverse entry gives it the client's address again
 * (its source stays the backend the socket is connected to). */
static __always_inline int egress_snat(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return TC_ACT_UNSPEC;
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (!cookie)
		return TC_ACT_UNSPEC;
	struct swy_sock_key sk = {.cookie = cookie, .addr = p->t.dst, .port = p->t.dport, .dir = SWY_SOCK_REVERSE};
	struct swy_sock_val *sv = bpf_map_lookup_elem(&swy_sock, &sk);
	if (!sv || !(sv->flags & SWY_SOCK_MASQ))
		return TC_ACT_UNSPEC;
	struct swy_config *cfg = config();
	if (!cfg)
		return TC_ACT_UNSPEC;
	struct swy_addr masq = p->v6 ? cfg->snat6 : cfg->snat4;
	/* Already the address replies come back to: nothing to do. */
	if (addr_zero(&masq) || addr_eq(&masq, &p->t.src))
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	struct swy_ct_key rk = {.src = p->t.dst, .dst = masq, .sport = p->t.dport, .proto = p->t.proto};
	if (pick_port(&rk, tuple_hash(&p->t), now, cfg)) {
		stat(SWY_STAT_SNAT_EXHAUSTED);
		return TC_ACT_SHOT;
	}
	struct swy_ct_val fwd = {.nat = p->t.dst, .nat_port = p->t.dport, .nat2 = masq, .nat2_port = rk.dport,
				 .dir = SWY_CT_FORWARD, .flags = SWY_CT_SNAT | SWY_CT_EGRESS, .last_ns = now};
	struct swy_ct_val rev = {.nat = p->t.dst, .nat_port = p->t.dport, .nat2 = p->t.src, .nat2_port = p->t.sport,
				 .dir = SWY_CT_REVERSE, .flags = SWY_CT_SNAT, .last_ns = now};
	if (bpf_map_update_elem(&swy_ct, &rk, &rev, BPF_ANY) || bpf_map_update_elem(&swy_ct, &p->t, &fwd, BPF_ANY)) {
		stat(SWY_STAT_CT_INSERT_FAILED);
		return TC_ACT_SHOT;
	}
	if (set_addr(skb, p, 1, &p->t.src, &masq) || set_port(skb, p, 1, p->t.sport, rk.dport))
		return TC_ACT_SHOT;
	stat(SWY_STAT_EGRESS_SNAT);
	return TC_ACT_OK;
}

/* Egress (after routing; the packet leaves by this interface), for packets
 * the node sends itself:
 * - replies a host-network endpoint sends never pass an ingress hook, so
 *   their reverse NAT happens here;
 * - connections of node processes that the plan masquerades get their
 *   SNAT here (egress_snat), later packets through the forward entry. */
SEC("classifier")
int swy_tc_egress(struct __sk_buff *skb)
{
	struct pkt p = {};
	/* Only packets the node itself sends (no ingress interface): a packet
	 * our ingress program translated and redirected here must not be
	 * translated twice (e.g. a new connection's SYN-ACK on a tuple a
	 * closed translated flow still holds). */
	if (skb->ingress_ifindex || parse(skb, &p))
		return TC_ACT_UNSPEC;
	struct swy_ct_val *ctp = bpf_map_lookup_elem(&swy_ct, &p.t);
	if (ctp && ctp->dir == SWY_CT_REVERSE) {
		ctp->last_ns = bpf_ktime_get_ns();
		ctp->flags |= closing_flag(&p);
		struct swy_ct_val ct = *ctp;
		if (set_addr(skb, &p, 1, &p.t.src, &ct.nat) || set_port(skb, &p, 1, p.t.sport, ct.nat_port))
			return TC_ACT_SHOT;
		if (ct.flags & SWY_CT_SNAT) {
			if (set_addr(skb, &p, 0, &p.t.dst, &ct.nat2) || set_port(skb, &p, 0, p.t.dport, ct.nat2_port))
				return TC_ACT_SHOT;
		}
		stat(SWY_STAT_REVNAT);
		return TC_ACT_OK;
	}
	if (ctp && (ctp->flags & SWY_CT_EGRESS)) {
		/* A SYN on a closed flow's tuple is a new connection: SNAT it afresh. */
		int renewed = p.t.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN &&
			      (ctp->flags & SWY_CT_CLOSING);
		if (!renewed) {
			ctp->last_ns = bpf_ktime_get_ns();
			ctp->flags |= closing_flag(&p);
			struct swy_ct_val ct = *ctp;
			if (set_addr(skb, &p, 1, &p.t.src, &ct.nat2) || set_port(skb, &p, 1, p.t.sport, ct.nat2_port))
				return TC_ACT_SHOT;
			return TC_ACT_OK;
		}
	}
	return egress_snat(skb, &p);
}

/* ------------------------------------------------------- socket hooks --- */

static __always_inline int sock_netns_ok(struct bpf_sock_addr *ctx)
{
	struct swy_config *cfg = config();
	if (!cfg)
		return 0;
	return cfg->netns_cookie == 0 || bpf_get_netns_cookie(ctx) == cfg->netns_cookie;
}

/* connect and sendmsg: the frontend in the socket address becomes a backend. */
static __always_inline int sock_forward(struct bpf_sock_addr *ctx, int v6, int sendmsg)
{
	struct swy_addr dst;
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	if (!sock_netns_ok(ctx))
		return 1;
	if (v6) {
		dst.w[0] = ctx->user_ip6[0];
		dst.w[1] = ctx->user_ip6[1];
		dst.w[2] = ctx->user_ip6[2];
		dst.w[3] = ctx->user_ip6[3];
	} else {
		addr_v4(&dst, ctx->user_ip4);
	}
	__u16 port = (__u16)ctx->user_port;
	struct swy_svc_val *svc = lookup_frontend(&dst, port, proto);
	if (!svc)
		return 1;
	__u64 route_id = svc->route[SWY_CLASS_NODE];
	struct swy_route_val *route = bpf_map_lookup_elem(&swy_route, &route_id);
	if (!route || route->verdict == SWY_DROP) {
		stat(SWY_STAT_DROP);
		bpf_set_retval(-ETIMEDOUT);
		return 0;
	}
	if (route->verdict == SWY_REJECT) {
		stat(SWY_STAT_REJECT);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct swy_backend be;
	struct swy_sock_key fk = {.cookie = cookie, .addr = dst, .port = port, .dir = SWY_SOCK_FORWARD};
	struct swy_sock_val *prev = sendmsg ? bpf_map_lookup_elem(&swy_sock, &fk) : NULL;
	if (prev) {
		be.addr = prev->addr;
		be.port = prev->port;
	} else {
		struct swy_addr node = {};
		if (select_backend(svc, route_id, route, &node, (__u32)cookie ^ (__u32)(cookie >> 32), &be)) {
			stat(SWY_STAT_DROP);
			bpf_set_retval(-ETIMEDOUT);
			return 0;
		}
		if (sendmsg) {
			struct swy_sock_val fv = {.addr = be.addr, .port = be.port};
			bpf_map_update_elem(&swy_sock, &fk, &fv, BPF_ANY);
		}
	}
	struct swy_sock_key rk = {.cookie = cookie, .addr = be.addr, .port = be.port, .dir = SWY_SOCK_REVERSE};
	struct swy_sock_val rv = {.addr = dst, .port = port};
	/* Masquerading happens at TC egress (never towards the node itself). */
	if (((svc->masq >> SWY_CLASS_NODE) & 1) && !is_node_addr(&be.addr))
		rv.flags = SWY_SOCK_MASQ;
	bpf_map_update_elem(&swy_sock, &rk, &rv, BPF_ANY);
	if (v6) {
		ctx->user_ip6[0] = be.addr.w[0];
		ctx->user_ip6[1] = be.addr.w[1];
		ctx->user_ip6[2] = be.addr.w[2];
		ctx->user_ip6[3] = be.addr.w[3];
	} else {
		ctx->user_ip4 = be.addr.w[3];
	}
	ctx->user_port = be.port;
	stat(SWY_STAT_SOCK_LB);
	return 1;
}

/* recvmsg and getpeername: a backend's address shows as the frontend. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, int v6)
{
	struct swy_sock_key rk = {.cookie = bpf_get_socket_cookie(ctx), .dir = SWY_SOCK_REVERSE};
	if (v6) {
		rk.addr.w[0] = ctx->user_ip6[0];
		rk.addr.w[1] = ctx->user_ip6[1];
		rk.addr.w[2] = ctx->user_ip6[2];
		rk.addr.w[3] = ctx->user_ip6[3];
	} else {
		addr_v4(&rk.addr, ctx->user_ip4);
	}
	rk.port = (__u16)ctx->user_port;
	struct swy_sock_val *rv = bpf_map_lookup_elem(&swy_sock, &rk);
	if (!rv)
		return 1;
	if (v6) {
		ctx->user_ip6[0] = rv->addr.w[0];
		ctx->user_ip6[1] = rv->addr.w[1];
		ctx->user_ip6[2] = rv->addr.w[2];
		ctx->user_ip6[3] = rv->addr.w[3];
	} else {
		ctx->user_ip4 = rv->addr.w[3];
	}
	ctx->user_port = rv->port;
	return 1;
}

SEC("cgroup/connect4")
int swy_connect4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 0, 0);
}

SEC("cgroup/connect6")
int swy_connect6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 1, 0);
}

SEC("cgroup/sendmsg4")
int swy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 0, 1);
}

SEC("cgroup/sendmsg6")
int swy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_forward(ctx, 1, 1);
}

SEC("cgroup/recvmsg4")
int swy_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/recvmsg6")
int swy_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}

SEC("cgroup/getpeername4")
int swy_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 0);
}

SEC("cgroup/getpeername6")
int swy_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_reverse(ctx, 1);
}
