/* Prints the layouts of switchyard.h as Rust, for the layout agreement tests.
 * Compiled for the host and run by build.rs; BPF and x86_64 agree on the
 * sizes and alignments of the fixed-width types used in the header. */
#include <stddef.h>
#include <stdio.h>
#include "switchyard.h"

#define SIZE(s) printf("    (\"%s\", \"<size>\", %zu),\n", #s, sizeof(struct s))
#define OFF(s, f) printf("    (\"%s\", \"%s\", %zu),\n", #s, #f, offsetof(struct s, f))

int main(void)
{
	printf("/// (struct, field or <size>, bytes) as the C compiler lays out switchyard.h.\n");
	printf("pub const C_LAYOUT: &[(&str, &str, usize)] = &[\n");
	SIZE(swy_addr);
	SIZE(swy_svc_key); OFF(swy_svc_key, addr); OFF(swy_svc_key, port); OFF(swy_svc_key, proto); OFF(swy_svc_key, scope);
	SIZE(swy_svc_val); OFF(swy_svc_val, route); OFF(swy_svc_val, id); OFF(swy_svc_val, affinity_timeout);
	OFF(swy_svc_val, kind); OFF(swy_svc_val, masq); OFF(swy_svc_val, flags); OFF(swy_svc_val, ranges);
	SIZE(swy_route_val); OFF(swy_route_val, generation); OFF(swy_route_val, count); OFF(swy_route_val, verdict); OFF(swy_route_val, flags);
	SIZE(swy_backend_key); OFF(swy_backend_key, route); OFF(swy_backend_key, generation); OFF(swy_backend_key, slot);
	SIZE(swy_backend); OFF(swy_backend, addr); OFF(swy_backend, port); OFF(swy_backend, flags);
	SIZE(swy_maglev_key); OFF(swy_maglev_key, route); OFF(swy_maglev_key, generation);
	SIZE(swy_maglev_val);
	SIZE(swy_ct_key); OFF(swy_ct_key, src); OFF(swy_ct_key, dst); OFF(swy_ct_key, sport); OFF(swy_ct_key, dport); OFF(swy_ct_key, proto);
	SIZE(swy_ct_val); OFF(swy_ct_val, nat); OFF(swy_ct_val, nat2); OFF(swy_ct_val, nat_port); OFF(swy_ct_val, nat2_port);
	OFF(swy_ct_val, dir); OFF(swy_ct_val, flags); OFF(swy_ct_val, last_ns); OFF(swy_ct_val, route);
	SIZE(swy_aff_key); OFF(swy_aff_key, route); OFF(swy_aff_key, client);
	SIZE(swy_aff_val); OFF(swy_aff_val, backend); OFF(swy_aff_val, slot); OFF(swy_aff_val, last_ns);
	SIZE(swy_lpm_key); OFF(swy_lpm_key, prefixlen); OFF(swy_lpm_key, addr);
	SIZE(swy_srcrange_key); OFF(swy_srcrange_key, prefixlen); OFF(swy_srcrange_key, id); OFF(swy_srcrange_key, addr);
	SIZE(swy_sock_key); OFF(swy_sock_key, cookie); OFF(swy_sock_key, addr); OFF(swy_sock_key, port); OFF(swy_sock_key, dir);
	SIZE(swy_sock_val); OFF(swy_sock_val, addr); OFF(swy_sock_val, port); OFF(swy_sock_val, flags);
	SIZE(swy_config); OFF(swy_config, snat4); OFF(swy_config, snat6); OFF(swy_config, netns_cookie);
	OFF(swy_config, snat_port_min); OFF(swy_config, snat_port_max); OFF(swy_config, udp_timeout_s);
	printf("];\n");
	printf("pub const C_CONSTANTS: &[(&str, u64)] = &[\n");
#define K(c) printf("    (\"%s\", %llu),\n", #c, (unsigned long long)(c))
	K(SWY_CLASS_EXTERNAL); K(SWY_CLASS_POD); K(SWY_CLASS_NODE); K(SWY_SCOPE_ADDR); K(SWY_SCOPE_NODEPORT);
	K(SWY_KIND_CLUSTER_IP); K(SWY_KIND_EXTERNAL_IP); K(SWY_KIND_LOAD_BALANCER); K(SWY_KIND_NODE_PORT);
	K(SWY_BACKEND_HAIRPIN); K(SWY_FORWARD); K(SWY_REJECT); K(SWY_DROP); K(SWY_ROUTE_MAGLEV); K(SWY_MAGLEV_M);
	K(SWY_NODE_ADDR); K(SWY_NODE_NODEPORT); K(SWY_STATS); K(SWY_CT_CLOSING); K(SWY_CT_SNAT); K(SWY_CT_EGRESS);
	K(SWY_CT_FORWARD); K(SWY_CT_REVERSE); K(SWY_SOCK_FORWARD); K(SWY_SOCK_REVERSE); K(SWY_SOCK_MASQ);
	printf("];\n");
	return 0;
}
