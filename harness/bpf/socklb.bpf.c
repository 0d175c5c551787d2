// SPDX-License-Identifier: Apache-2.0
//
// zonebench's eBPF service dataplane: a socket-level load balancer in the manner of Cilium's
// socket LB (bpf_sock.c). Instead of rewriting packets on the way out, it rewrites the
// destination a process passes to connect(2) or sendmsg(2): a socket in the node's cgroup
// that connects to a Service VIP is connected straight to one of the Service's backends, so
// no per-packet NAT and no rule traversal happens, whatever the number of Services.
//
//   cgroup/connect4  TCP and connected UDP: VIP:port -> backend, picked at random.
//   cgroup/sendmsg4  unconnected UDP (sendto): the same, per datagram.
//   cgroup/recvmsg4  UDP replies from a backend are shown to the application as coming from
//                    the VIP it sent to (reverse translation keyed by socket cookie), so a
//                    client that checks the reply's source works as it would with DNAT.
//
// The maps are filled by harness/src/dataplane/ebpf (the Rust loader), which owns the layouts
// below and writes keys and values as bytes; keep the two in step. Addresses and ports are in
// network byte order, counts and ids in host order.
//
// Consistency during a resync: a changed Service gets a fresh id; the loader writes its
// backends under the new id first and only then replaces the service entry (one atomic map
// update), so a connect sees either the old or the new backend set, never a partial one.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

// The defaults here are overridden by the loader (which checks capacity against them).
#define MAX_SERVICES 65536
#define MAX_BACKENDS 262144
#define MAX_REVNAT 16384

struct svc_key {
    __u32 vip;   // network order
    __u16 port;  // network order
    __u8 proto;  // IPPROTO_TCP or IPPROTO_UDP
    __u8 pad;
};

struct svc_val {
    __u32 count;  // backends in slots 0..count; 0 = no endpoints: refuse
    __u32 id;     // key of the backend entries; changes whenever the backend set changes
};

struct be_key {
    __u32 id;
    __u32 slot;
};

struct be_val {
    __u32 ip;    // network order
    __u16 port;  // network order
    __u16 pad;
};

// Reverse translation for UDP: (socket, backend) -> the VIP the application addressed.
struct revnat_key {
    __u64 cookie;
    __u32 ip;
    __u16 port;
    __u16 pad;
};

struct revnat_val {
    __u32 vip;
    __u16 port;
    __u16 pad;
};

// Hash maps allocate on insert (BPF_F_NO_PREALLOC): a node with ten Services should not pin
// the memory of a quarter million backends.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_SERVICES);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct svc_key);
    __type(value, struct svc_val);
} zb_services SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_BACKENDS);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct be_key);
    __type(value, struct be_val);
} zb_backends SEC(".maps");

// LRU: entries are per UDP socket and backend, and old ones may simply age out (as Cilium's
// reverse socket map does).
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, MAX_REVNAT);
    __type(key, struct revnat_key);
    __type(value, struct revnat_val);
} zb_revnat SEC(".maps");

// What to do with a destination. Cgroup sock_addr programs return 1 to let the syscall go
// on (with whatever address they wrote) and 0 to fail it with EPERM.
#define VERDICT_PASS 1
#define VERDICT_REFUSE 0

static __always_inline int translate(struct bpf_sock_addr *ctx, __u8 proto) {
    struct svc_key key = {
        .vip = ctx->user_ip4,
        .port = (__u16)ctx->user_port,
        .proto = proto,
        .pad = 0,
    };
    struct be_val *be = 0;

    // Two tries: if the loader retired this service's old backend set between our service
    // lookup and the backend lookup, the second service lookup sees the new set.
    for (int attempt = 0; attempt < 2 && !be; attempt++) {
        struct svc_val *svc = bpf_map_lookup_elem(&zb_services, &key);
        if (!svc)
            return VERDICT_PASS;  // not a Service address: leave it alone
        __u32 count = svc->count;
        if (count == 0)
            return VERDICT_REFUSE;  // a Service without endpoints refuses, as kube-proxy does
        struct be_key bkey = {
            .id = svc->id,
            .slot = bpf_get_prandom_u32() % count,
        };
        be = bpf_map_lookup_elem(&zb_backends, &bkey);
    }
    if (!be)
        return VERDICT_REFUSE;  // a broken table (backends missing): fail loudly, never leak to the VIP

    __u32 vip = key.vip;
    __u16 vport = key.port;
    ctx->user_ip4 = be->ip;
    ctx->user_port = (__u32)be->port;

    if (proto == IPPROTO_UDP) {
        struct revnat_key rkey = {
            .cookie = bpf_get_socket_cookie(ctx),
            .ip = be->ip,
            .port = be->port,
            .pad = 0,
        };
        struct revnat_val rval = {.vip = vip, .port = vport, .pad = 0};
        // A full LRU evicts the oldest entry; failure here only loses the cosmetic source
        // rewrite for this socket, so the datagram still goes.
        bpf_map_update_elem(&zb_revnat, &rkey, &rval, BPF_ANY);
    }
    return VERDICT_PASS;
}

SEC("cgroup/connect4")
int zb_connect4(struct bpf_sock_addr *ctx) {
    __u32 proto = ctx->protocol;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
        return VERDICT_PASS;
    return translate(ctx, (__u8)proto);
}

SEC("cgroup/sendmsg4")
int zb_sendmsg4(struct bpf_sock_addr *ctx) {
    return translate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int zb_recvmsg4(struct bpf_sock_addr *ctx) {
    struct revnat_key rkey = {
        .cookie = bpf_get_socket_cookie(ctx),
        .ip = ctx->user_ip4,
        .port = (__u16)ctx->user_port,
        .pad = 0,
    };
    struct revnat_val *rval = bpf_map_lookup_elem(&zb_revnat, &rkey);
    if (rval) {
        ctx->user_ip4 = rval->vip;
        ctx->user_port = (__u32)rval->port;
    }
    return VERDICT_PASS;  // recvmsg programs must return 1
}

// None of the helpers used is GPL-only, so the program carries the project's licence.
char LICENSE[] SEC("license") = "Apache-2.0";
