/*
 * L2 guest of the vhost-net test: a multiboot kernel that drives a
 * virtio-net device (legacy PCI interface, polled, no interrupts) and
 * streams TCP to a peer in L1 without end.
 *
 * It resolves the peer with ARP, connects from a port of its boot, and
 * sends a byte stream whose byte k is k % 251, in segments of SEG bytes,
 * as much as the peer's window allows; lost segments are sent again after
 * RTO (go-back-N).  It answers ARP requests for its own address.  The
 * receiver in L1 checks every byte and sees the same connection go on
 * across updates.
 *
 * Results live in a mailbox at MAILBOX (struct mailbox), read by the test
 * with pmemsave.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "l2.h"

#define MAILBOX         0x500000
#define RXQ_RING        0x600000
#define TXQ_RING        0x610000
#define RX_BUFS         0x700000
#define TX_BUFS         0x800000
#define BUF_SIZE        2048
#define RX_POSTED       128
#define VNET_HDR        10      /* struct virtio_net_hdr, no features */

#define GUEST_IP        0x0a00040f      /* 10.0.4.15 */
#define PEER_IP         0x0a000401      /* 10.0.4.1 */
#define PEER_PORT       5001
#define SEG             1024
#define MAX_FLIGHT      (16 * SEG)
/* TSC cycles: about 0.2 s at the host's clock rate */
#define RTO             (1ull << 29)

struct mailbox {
    uint32_t magic;
    uint32_t state;             /* see ST_ */
    uint32_t acked;             /* stream bytes the peer acknowledged */
    uint32_t segments;          /* data segments sent, resent included */
    uint32_t resent;            /* go-back-N restarts */
    uint32_t rx_packets;
    uint32_t arp_answers;       /* ARP requests for us answered */
    uint32_t errors;
    uint32_t last_error;        /* see ERR_ */
    uint32_t queue_sizes;       /* rx << 16 | tx */
};

#define MAILBOX_MAGIC   0x4e455447      /* "GTEN" */
#define ST_ARP          1
#define ST_SYN_SENT     2
#define ST_ESTABLISHED  3
#define ST_DEAD         4
#define ERR_NO_DEVICE   1
#define ERR_RESET       2       /* the peer reset the connection */
#define ERR_FIN         3       /* the peer closed it */
#define ERR_BAD_ACK     4       /* an ACK for bytes never sent */

/* Written by the guest, read by the host behind the compiler's back */
typedef volatile struct mailbox shared_mailbox;
static shared_mailbox *const mb = (shared_mailbox *)MAILBOX;

/* Legacy virtio PCI registers, from BAR 0 (I/O) */
#define VIRTIO_HOST_FEATURES    0x00
#define VIRTIO_GUEST_FEATURES   0x04
#define VIRTIO_QUEUE_PFN        0x08
#define VIRTIO_QUEUE_SIZE       0x0c
#define VIRTIO_QUEUE_SEL        0x0e
#define VIRTIO_QUEUE_NOTIFY     0x10
#define VIRTIO_STATUS           0x12
#define VIRTIO_CONFIG           0x14    /* MSI-X off */

struct vring_desc {
    uint32_t addr_lo, addr_hi;
    uint32_t len;
    uint16_t flags, next;
};

/* Rings: the device reads and writes them behind the compiler's back */
typedef volatile struct vring_desc shared_desc;
/* (the same) */
typedef volatile uint16_t shared_u16;

struct vq {
    int index;
    uint16_t size;
    shared_desc *desc;
    shared_u16 *avail;          /* flags, idx, ring[size] */
    shared_u16 *used;           /* flags, idx, then {id, len} pairs */
    uint16_t last_used;
};

static uint16_t io;
static struct vq rxq, txq;
static uint8_t mac[6], peer_mac[6];
static uint16_t tx_free[256];
static int tx_nfree;

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;

    asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static inline void barrier(void)
{
    asm volatile("mfence" : : : "memory");
}

static void fail(uint32_t what)
{
    mb->errors++;
    mb->last_error = what;
}

static void copy(void *dst, const void *src, uint32_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;

    while (n--) {
        *d++ = *s++;
    }
}

static void zero(void *dst, uint32_t n)
{
    uint8_t *d = dst;

    while (n--) {
        *d++ = 0;
    }
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v);
}

static uint16_t get16(const uint8_t *p)
{
    return p[0] << 8 | p[1];
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)get16(p) << 16 | get16(p + 2);
}

/* One's-complement sum of @n bytes, added to @sum */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t n)
{
    while (n > 1) {
        sum += get16(p);
        p += 2;
        n -= 2;
    }
    if (n) {
        sum += p[0] << 8;
    }
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return ~sum;
}

/* Set up queue @index at @ring (page aligned, legacy layout). */
static void vq_init(struct vq *q, int index, uint32_t ring)
{
    uint32_t avail_end;

    outw(io + VIRTIO_QUEUE_SEL, index);
    q->index = index;
    q->size = inw(io + VIRTIO_QUEUE_SIZE);
    q->desc = (shared_desc *)ring;
    q->avail = (shared_u16 *)(ring + 16 * q->size);
    avail_end = ring + 16 * q->size + 6 + 2 * q->size;
    q->used = (shared_u16 *)((avail_end + 4095) & ~4095u);
    zero((void *)ring, (uint32_t)q->used + 6 + 8 * q->size - ring);
    q->avail[0] = 1;            /* VRING_AVAIL_F_NO_INTERRUPT: we poll */
    q->last_used = 0;
    outl(io + VIRTIO_QUEUE_PFN, ring >> 12);
}

static void vq_add(struct vq *q, uint16_t id)
{
    q->avail[2 + q->avail[1] % q->size] = id;
    barrier();
    q->avail[1]++;
}

static void vq_kick(struct vq *q)
{
    barrier();
    if (!(q->used[0] & 1)) {    /* VRING_USED_F_NO_NOTIFY */
        outw(io + VIRTIO_QUEUE_NOTIFY, q->index);
    }
}

/* The next used element's id (and @len), or -1 */
static int vq_next_used(struct vq *q, uint32_t *len)
{
    shared_u32 *elem;

    if (q->used[1] == q->last_used) {
        return -1;
    }
    barrier();
    elem = (shared_u32 *)(q->used + 2) + 2 * (q->last_used % q->size);
    q->last_used++;
    *len = elem[1];
    return elem[0];
}

static int net_init(void)
{
    int dev = pci_find(0x10001af4), i;

    if (dev < 0) {
        return -1;
    }
    /* I/O space, bus master */
    pci_write(dev, 4, (pci_read(dev, 4) & 0xffff) | 0x5 | (1 << 10));
    io = pci_read(dev, 0x10) & ~3u;
    outb(io + VIRTIO_STATUS, 0);
    outb(io + VIRTIO_STATUS, 1 | 2);                /* ACKNOWLEDGE, DRIVER */
    outl(io + VIRTIO_GUEST_FEATURES, 1u << 5);      /* VIRTIO_NET_F_MAC */
    for (i = 0; i < 6; i++) {
        mac[i] = inb(io + VIRTIO_CONFIG + i);
    }
    vq_init(&rxq, 0, RXQ_RING);
    vq_init(&txq, 1, TXQ_RING);
    mb->queue_sizes = rxq.size << 16 | txq.size;
    for (i = 0; i < RX_POSTED && i < rxq.size; i++) {
        rxq.desc[i].addr_lo = RX_BUFS + i * BUF_SIZE;
        rxq.desc[i].addr_hi = 0;
        rxq.desc[i].len = BUF_SIZE;
        rxq.desc[i].flags = 2;                      /* VRING_DESC_F_WRITE */
        vq_add(&rxq, i);
    }
    for (i = 0; i < txq.size && i < 256; i++) {
        tx_free[tx_nfree++] = i;
    }
    outb(io + VIRTIO_STATUS, 1 | 2 | 4);            /* DRIVER_OK */
    vq_kick(&rxq);
    return 0;
}

/* Take back the transmit buffers the device is done with. */
static void tx_reclaim(void)
{
    uint32_t len;
    int id;

    while ((id = vq_next_used(&txq, &len)) >= 0) {
        tx_free[tx_nfree++] = id;
    }
}

/* A transmit buffer's frame (after the header), or NULL if none is free */
static uint8_t *tx_frame(uint16_t *id)
{
    uint8_t *buf;

    tx_reclaim();
    if (!tx_nfree) {
        return 0;
    }
    *id = tx_free[--tx_nfree];
    buf = (uint8_t *)(TX_BUFS + *id * BUF_SIZE);
    zero(buf, VNET_HDR);
    return buf + VNET_HDR;
}

static void tx_send(uint16_t id, uint32_t frame_len)
{
    txq.desc[id].addr_lo = TX_BUFS + id * BUF_SIZE;
    txq.desc[id].addr_hi = 0;
    txq.desc[id].len = VNET_HDR + frame_len;
    txq.desc[id].flags = 0;
    vq_add(&txq, id);
    vq_kick(&txq);
}

static void eth_header(uint8_t *f, const uint8_t *dst, uint16_t type)
{
    copy(f, dst, 6);
    copy(f + 6, mac, 6);
    put16(f + 12, type);
}

/* ARP @op (1 request, 2 reply) to @tha/@tpa */
static void arp_send(int op, const uint8_t *tha, uint32_t tpa)
{
    static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    uint8_t *f, *a;
    uint16_t id;

    f = tx_frame(&id);
    if (!f) {
        return;
    }
    eth_header(f, op == 1 ? bcast : tha, 0x0806);
    a = f + 14;
    put16(a, 1);
    put16(a + 2, 0x0800);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    copy(a + 8, mac, 6);
    put32(a + 14, GUEST_IP);
    if (op == 1) {
        zero(a + 18, 6);
    } else {
        copy(a + 18, tha, 6);
    }
    put32(a + 24, tpa);
    tx_send(id, 14 + 28);
}

/* TCP */

static uint16_t local_port;
static uint32_t iss;
static uint32_t snd_una, snd_nxt, rcv_nxt;
static uint32_t peer_wnd;
static uint64_t last_progress;
static uint8_t pattern[251 + SEG];

static void tcp_send(uint8_t flags, uint32_t seq, uint32_t len)
{
    uint8_t *f, *ip, *tcp;
    uint32_t sum;
    uint16_t id;

    f = tx_frame(&id);
    if (!f) {
        return;
    }
    eth_header(f, peer_mac, 0x0800);
    ip = f + 14;
    tcp = ip + 20;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, 40 + len);
    put16(ip + 4, 0);
    put16(ip + 6, 0x4000);                          /* don't fragment */
    ip[8] = 64;
    ip[9] = 6;
    put16(ip + 10, 0);
    put32(ip + 12, GUEST_IP);
    put32(ip + 16, PEER_IP);
    put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
    put16(tcp, local_port);
    put16(tcp + 2, PEER_PORT);
    put32(tcp + 4, seq);
    put32(tcp + 8, rcv_nxt);
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    put16(tcp + 14, 65535);
    put16(tcp + 16, 0);
    put16(tcp + 18, 0);
    if (len) {
        /* stream byte k is k % 251 */
        copy(tcp + 20, pattern + (seq - iss - 1) % 251, len);
    }
    sum = csum_add(0, ip + 12, 8) + 6 + 20 + len;
    put16(tcp + 16, csum_fold(csum_add(sum, tcp, 20 + len)));
    tx_send(id, 14 + 20 + 20 + len);
}

/* A TCP segment from the peer */
static void tcp_input(const uint8_t *ip, uint32_t len)
{
    const uint8_t *tcp = ip + (ip[0] & 0xf) * 4;
    uint32_t seq = get32(tcp + 4), ack = get32(tcp + 8);
    uint8_t flags = tcp[13];
    uint32_t data = len - (tcp - ip) - (tcp[12] >> 4) * 4;

    if (get16(tcp) != PEER_PORT || get16(tcp + 2) != local_port) {
        return;
    }
    if (flags & 0x04) {                             /* RST */
        if (mb->state != ST_SYN_SENT) {
            fail(ERR_RESET);
            mb->state = ST_DEAD;
        }
        return;
    }
    if (mb->state == ST_SYN_SENT) {
        if ((flags & 0x12) == 0x12 && ack == iss + 1) {
            rcv_nxt = seq + 1;
            snd_una = snd_nxt = iss + 1;
            peer_wnd = get16(tcp + 14);
            mb->state = ST_ESTABLISHED;
            tcp_send(0x10, snd_nxt, 0);
            last_progress = rdtsc();
        }
        return;
    }
    if (mb->state != ST_ESTABLISHED) {
        return;
    }
    if (flags & 0x01) {                             /* FIN */
        fail(ERR_FIN);
        mb->state = ST_DEAD;
        return;
    }
    if (data) {
        tcp_send(0x10, snd_nxt, 0);                 /* not expected; ack */
    }
    if (!(flags & 0x10)) {
        return;
    }
    if ((int32_t)(ack - snd_una) > 0) {
        if ((int32_t)(ack - snd_nxt) > 0) {
            /* after a go-back-N, snd_nxt may be behind what was sent */
            if ((int32_t)(ack - (snd_una + MAX_FLIGHT + SEG)) > 0) {
                fail(ERR_BAD_ACK);
                return;
            }
            snd_nxt = ack;
        }
        mb->acked += ack - snd_una;
        snd_una = ack;
        last_progress = rdtsc();
    }
    peer_wnd = get16(tcp + 14);
}

static void arp_input(const uint8_t *a)
{
    if (get16(a) != 1 || get16(a + 2) != 0x0800 || get32(a + 24) != GUEST_IP) {
        return;
    }
    if (get16(a + 6) == 1) {
        arp_send(2, a + 8, get32(a + 14));
        mb->arp_answers++;
    } else if (get16(a + 6) == 2 && get32(a + 14) == PEER_IP &&
               mb->state == ST_ARP) {
        copy(peer_mac, a + 8, 6);
        mb->state = ST_SYN_SENT;
        last_progress = 0;
    }
}

static void rx_poll(void)
{
    uint32_t len;
    int id, n = 0;

    while ((id = vq_next_used(&rxq, &len)) >= 0) {
        const uint8_t *f = (const uint8_t *)(RX_BUFS + id * BUF_SIZE) +
                           VNET_HDR;

        mb->rx_packets++;
        if (len >= VNET_HDR + 14 + 28 && get16(f + 12) == 0x0806) {
            arp_input(f + 14);
        } else if (len >= VNET_HDR + 14 + 40 && get16(f + 12) == 0x0800 &&
                   f[14 + 9] == 6 && get32(f + 14 + 12) == PEER_IP &&
                   get32(f + 14 + 16) == GUEST_IP) {
            tcp_input(f + 14, get16(f + 14 + 2));
        }
        vq_add(&rxq, id);
        n++;
    }
    if (n) {
        vq_kick(&rxq);
    }
}

/* Send what the window allows; go back to snd_una after RTO. */
static void tcp_output(void)
{
    uint64_t t = rdtsc();
    uint32_t wnd = peer_wnd < MAX_FLIGHT ? peer_wnd : MAX_FLIGHT;

    if (t - last_progress > RTO) {
        if (snd_nxt != snd_una) {
            mb->resent++;
        }
        snd_nxt = snd_una;
        last_progress = t;
        if (wnd < SEG) {
            wnd = SEG;                              /* probe a closed window */
        }
    }
    while (snd_nxt - snd_una + SEG <= wnd && tx_nfree > 4) {
        tcp_send(0x18, snd_nxt, SEG);               /* ACK, PSH */
        snd_nxt += SEG;
        mb->segments++;
        tx_reclaim();
    }
}

void main(void)
{
    uint64_t t;
    int i;

    zero((void *)MAILBOX, sizeof(struct mailbox));
    for (i = 0; i < (int)sizeof(pattern); i++) {
        pattern[i] = i % 251;
    }
    if (net_init() < 0) {
        fail(ERR_NO_DEVICE);
        halt();
    }
    /* A new port and sequence for each boot: L1 may hold the last one */
    t = rdtsc();
    local_port = 40000 + (uint32_t)(t >> 4) % 20000;
    iss = (uint32_t)t;
    mb->state = ST_ARP;
    mb->magic = MAILBOX_MAGIC;
    last_progress = 0;
    for (;;) {
        rx_poll();
        tx_reclaim();
        t = rdtsc();
        switch (mb->state) {
        case ST_ARP:
            if (t - last_progress > RTO) {
                arp_send(1, 0, PEER_IP);
                last_progress = t;
            }
            break;
        case ST_SYN_SENT:
            if (t - last_progress > RTO) {
                tcp_send(0x02, iss, 0);             /* SYN */
                last_progress = t;
            }
            break;
        case ST_ESTABLISHED:
            tcp_output();
            break;
        }
        cpu_relax();
    }
}
