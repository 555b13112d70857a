/* Shared layouts of switchyard's eBPF maps.
 *
 * This header is the one definition of every key and value the programs and
 * the Rust loader exchange. The Rust mirror lives in src/layout.rs; the
 * `layout` tests compare sizes and offsets of both (build.rs compiles
 * layout.c, which prints them from this header).
 *
 * Conventions: addresses are 16 bytes, IPv4 as v4-mapped IPv6
 * (::ffff:a.b.c.d), network byte order; ports are network byte order.
 */
#ifndef SWITCHYARD_H
#define SWITCHYARD_H

#include <linux/types.h>

/* Source classes: index into swy_svc_val.route and bit in swy_svc_val.masq. */
#define SWY_CLASS_EXTERNAL 0
#define SWY_CLASS_POD 1
#define SWY_CLASS_NODE 2
#define SWY_CLASSES 3

/* swy_svc_key.scope */
#define SWY_SCOPE_ADDR 0     /* ClusterIP, externalIP, LB IP: the address matters */
#define SWY_SCOPE_NODEPORT 1 /* addr is ::ffff:0.0.0.0 (v4) or :: (v6); any node address with SWY_NODE_NODEPORT */

/* swy_svc_val.kind: what the frontend is (inspect reads it back). */
#define SWY_KIND_CLUSTER_IP 0
#define SWY_KIND_EXTERNAL_IP 1
#define SWY_KIND_LOAD_BALANCER 2
#define SWY_KIND_NODE_PORT 3

/* swy_backend.flags */
#define SWY_BACKEND_HAIRPIN 1 /* in the port's hairpin set: masquerade when it reaches itself */

/* swy_route_val.verdict */
#define SWY_FORWARD 0
#define SWY_REJECT 1
#define SWY_DROP 2

/* swy_route_val.flags */
#define SWY_ROUTE_MAGLEV 1

/* Maglev lookup table size (a prime; value of swy_maglev is this many slots). */
#define SWY_MAGLEV_M 1021

/* swy_node_addrs values */
#define SWY_NODE_ADDR 1     /* one of the node's own addresses */
#define SWY_NODE_NODEPORT 2 /* accepts NodePort traffic (--nodeport-addresses) */

/* swy_ct_val.dir */
#define SWY_CT_FORWARD 0
#define SWY_CT_REVERSE 1

/* swy_ct_val.flags */
#define SWY_CT_SNAT 1
#define SWY_CT_CLOSING 2 /* a FIN or RST was seen: a new SYN re-selects */
#define SWY_CT_EGRESS 4  /* forward entry applied at TC egress: SNAT of a node process's
			  * connection the socket hooks already sent to a backend */

/* swy_sock_key.dir */
#define SWY_SOCK_FORWARD 0 /* frontend -> backend (unconnected UDP sendmsg) */
#define SWY_SOCK_REVERSE 1 /* backend -> frontend (recvmsg, getpeername) */

/* swy_sock_val.flags (reverse entries) */
#define SWY_SOCK_MASQ 1 /* the plan masquerades node traffic: TC egress SNATs the connection */

/* Counters in swy_stats (per CPU). */
#define SWY_STAT_DNAT 0
#define SWY_STAT_REVNAT 1
#define SWY_STAT_REJECT 2
#define SWY_STAT_DROP 3
#define SWY_STAT_SOCK_LB 4
#define SWY_STAT_SNAT_EXHAUSTED 5
#define SWY_STAT_CT_INSERT_FAILED 6
#define SWY_STAT_NO_BACKEND 7
#define SWY_STAT_SOURCE_RANGE_DROP 8
#define SWY_STAT_PORT_REMAP 9   /* client port moved: its backend-side tuple was taken */
#define SWY_STAT_CT_TAKEOVER 10 /* a closed flow's entry gave way to a new untranslated flow */
#define SWY_STAT_EGRESS_SNAT 11 /* node process connections masqueraded at egress */
#define SWY_STATS 16

struct swy_addr {
	__u32 w[4];
};

/* swy_svc: a frontend. */
struct swy_svc_key {
	struct swy_addr addr;
	__u16 port;
	__u8 proto;
	__u8 scope;
};

struct swy_svc_val {
	__u64 route[SWY_CLASSES]; /* route id by source class */
	__u64 id;                 /* frontend id (source ranges) */
	__u32 affinity_timeout;   /* seconds; 0: no session affinity */
	__u8 kind;
	__u8 masq; /* bit per source class: SNAT to the node */
	__u8 flags;
	__u8 ranges; /* bit per source class: check swy_srcrange (the core's flow table) */
};

/* swy_route: one endpoint set; flipped atomically by rewriting this value. */
struct swy_route_val {
	__u32 generation;   /* generation of the backend slots in use */
	__u32 count; /* slots 0..count-1 of (route, generation) */
	__u8 verdict;
	__u8 flags;
	__u16 pad;
	__u32 pad2;
};

struct swy_backend_key {
	__u64 route;
	__u32 generation;
	__u32 slot;
};

struct swy_backend {
	struct swy_addr addr;
	__u16 port;
	__u16 flags; /* SWY_BACKEND_* */
};

struct swy_maglev_key {
	__u64 route;
	__u32 generation;
	__u32 pad;
};

struct swy_maglev_val {
	__u32 slot[SWY_MAGLEV_M];
};

struct swy_ct_key {
	struct swy_addr src;
	struct swy_addr dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Forward: nat = backend (new dst), nat2 = SNAT source (when SWY_CT_SNAT).
 * Reverse: nat = frontend (new src), nat2 = original client (new dst). */
struct swy_ct_val {
	struct swy_addr nat;
	struct swy_addr nat2;
	__u16 nat_port;
	__u16 nat2_port;
	__u8 dir;
	__u8 flags;
	__u16 pad;
	__u64 last_ns;
	__u64 route;
};

struct swy_aff_key {
	__u64 route;
	struct swy_addr client;
};

struct swy_aff_val {
	struct swy_backend backend;
	__u32 slot;
	__u64 last_ns;
};

struct swy_lpm_key {
	__u32 prefixlen;
	struct swy_addr addr;
};

struct swy_srcrange_key {
	__u32 prefixlen; /* 64 (the id) + 128 (v4-mapped or v6) bits at most */
	__u32 id[2];
	struct swy_addr addr;
};

struct swy_sock_key {
	__u64 cookie;
	struct swy_addr addr;
	__u16 port;
	__u8 dir;
	__u8 pad[5];
};

struct swy_sock_val {
	struct swy_addr addr;
	__u16 port;
	__u8 flags;
	__u8 pad;
};

/* swy_config[0] */
struct swy_config {
	struct swy_addr snat4; /* v4-mapped; zero: no IPv4 SNAT address */
	struct swy_addr snat6;
	__u64 netns_cookie; /* socket hooks act only in this netns; 0: any */
	__u16 snat_port_min; /* host order */
	__u16 snat_port_max;
	__u32 udp_timeout_s; /* idle UDP flows re-select after this */
};

#endif
