/*
 * libFuzzer target: the transfer and fork channel, as the new process reads it
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An input is what the old process (or the fork parent) writes into the
 * channel's socket, cut into writes: each write is a byte, the number
 * (modulo 4) of descriptors of /dev/null sent with it, a big-endian
 * 16-bit length, and that many bytes.  The harness writes them into a
 * socket pair, as many as its buffers take (many small writes fill them
 * before their bytes do), closes its end, and reads as the new process
 * does: the CPR state and its descriptors (cpr_channel_recv_state()),
 * then the state envelope (a "devices" message, cpr_file_parse()).
 */

#include "qemu/osdep.h"
#include <sys/socket.h>
#include "qapi/error.h"
#include "qemu/bswap.h"
#include "qemu/sockets.h"
#include "migration/cpr.h"
#include "migration/cpr-internal.h"
#include "fuzz.h"
#include "cpr_fuzz.h"

/* All of an input must fit in the socket's buffers */
#define CPR_CHANNEL_FUZZ_MAX    (128 * 1024)

static GString *cpr_channel_fuzz_cmdline(FuzzTarget *t)
{
    return g_string_new(CPR_FUZZ_MACHINE);
}

/* Append to @seed what the writes of @fn on a channel put on the wire */
static void cpr_channel_fuzz_record(GByteArray *seed, unsigned nfds,
                                    bool (*fn)(int fd, void *opaque),
                                    void *opaque)
{
    g_autoptr(GArray) got = g_array_new(false, false, sizeof(int));
    uint8_t buf[65535];
    uint8_t head[3];
    int sv[2];
    ssize_t n;

    g_assert(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
    g_assert(fn(sv[0], opaque));
    close(sv[0]);
    for (;;) {
        char control[CMSG_SPACE(sizeof(int) * 4)];
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = control, .msg_controllen = sizeof(control),
        };
        struct cmsghdr *c;

        n = recvmsg(sv[1], &msg, MSG_CMSG_CLOEXEC);
        g_assert(n >= 0);
        if (!n) {
            break;
        }
        for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            g_array_append_vals(got, CMSG_DATA(c),
                                (c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        }
        head[0] = got->len ? nfds : 0;
        stw_be_p(head + 1, n);
        g_byte_array_append(seed, head, 3);
        g_byte_array_append(seed, buf, n);
        cpr_fuzz_close_fds(got);
    }
    close(sv[1]);
}

static bool cpr_channel_fuzz_send_state(int fd, void *opaque)
{
    static const char *const names[] = { "ram:pc.ram", "ram:pc.bios" };
    g_autoptr(GArray) ids = g_array_new(false, false, sizeof(int));
    g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
    g_autoptr(GByteArray) state = NULL;
    int i;

    for (i = 0; i < ARRAY_SIZE(names); i++) {
        g_array_append_val(ids, (int) { 0 });
    }
    cpr_fuzz_open_fds(fds, ARRAY_SIZE(names));
    state = cpr_state_serialize_fds((char **)names, ids, fds);
    g_assert(cpr_channel_send_state(fd, state, fds, &error_abort));
    cpr_fuzz_close_fds(fds);
    return true;
}

static bool cpr_channel_fuzz_send_devices(int fd, void *opaque)
{
    GByteArray *envelope = opaque;

    return cpr_channel_send(fd, CPR_MSG_DEVICES, envelope->data,
                            envelope->len, NULL, 0, &error_abort);
}

/* Seeds: the state of a fork child's RAM and this machine's envelope */
static void cpr_channel_fuzz_seeds(void)
{
    g_autoptr(GByteArray) seed = g_byte_array_new();
    g_autoptr(GByteArray) envelope = cpr_file_save(CPR_MODE_TRANSFER,
                                                   &error_abort);

    cpr_channel_fuzz_record(seed, 2, cpr_channel_fuzz_send_state, NULL);
    cpr_channel_fuzz_record(seed, 0, cpr_channel_fuzz_send_devices,
                            envelope);
    cpr_fuzz_write_seed("transfer.cprc", seed->data, seed->len);
}

static void cpr_channel_fuzz_pre(QTestState *s)
{
    cpr_fuzz_pre();
    cpr_channel_fuzz_seeds();
}

/* Write the writes of @data into @fd, as many as its buffer takes */
static void cpr_channel_fuzz_write(int fd, const uint8_t *data, size_t size)
{
    qemu_socket_set_nonblock(fd);
    while (size >= 3) {
        g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
        size_t len = MIN(lduw_be_p(data + 1), size - 3);
        char control[CMSG_SPACE(sizeof(int) * 4)] = { 0 };
        struct iovec iov = { .iov_base = (void *)data + 3, .iov_len = len };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t n;

        cpr_fuzz_open_fds(fds, data[0] % 4);
        if (fds->len) {
            struct cmsghdr *c;

            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds->len);
            c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * fds->len);
            memcpy(CMSG_DATA(c), fds->data, sizeof(int) * fds->len);
        }
        /* Descriptors need a byte to travel with; a full buffer ends it */
        n = len || fds->len ? sendmsg(fd, &msg, 0) : 0;
        cpr_fuzz_close_fds(fds);
        if (n != len) {
            return;
        }
        data += 3 + len;
        size -= 3 + len;
    }
}

static void cpr_channel_fuzz(QTestState *s, const unsigned char *data,
                             size_t size)
{
    g_autoptr(GByteArray) b = NULL;
    g_autoptr(CprFile) cf = NULL;
    int bufsize = 2 * CPR_CHANNEL_FUZZ_MAX;
    Error *err = NULL;
    int sv[2];

    if (size > CPR_CHANNEL_FUZZ_MAX) {
        return;
    }
    g_assert(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof(bufsize));
    cpr_channel_fuzz_write(sv[0], data, size);
    close(sv[0]);

    if (cpr_channel_recv_state(sv[1], true, &err) >= 0 &&
        cpr_channel_recv(sv[1], CPR_MSG_DEVICES, &b, NULL, &err)) {
        cf = cpr_file_parse("channel", g_steal_pointer(&b), &err);
    }
    if (cpr_is_incoming()) {
        cpr_state_incoming_done();
    }
    close(sv[1]);
    error_free(err);
}

static void cpr_channel_fuzz_register(void)
{
    fuzz_add_target(&(FuzzTarget) {
        .name = "cpr-channel",
        .description = "the transfer and fork channels, read by the new "
                       "process",
        .get_init_cmdline = cpr_channel_fuzz_cmdline,
        .pre_fuzz = cpr_channel_fuzz_pre,
        .fuzz = cpr_channel_fuzz,
    });
}

fuzz_target_init(cpr_channel_fuzz_register);
