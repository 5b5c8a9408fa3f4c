/*
 * CPR: the unix socket between a QEMU and the one taking its VM over
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Transfer mode (cpr-transfer.c) talks over one connected unix stream
 * socket.  A message is (integers big-endian)
 *
 *   be32 type  be32 number of descriptors  be64 payload length
 *   the payload
 *
 * and its descriptors travel with SCM_RIGHTS on its header.  Both ends
 * use the socket blocking; the old process, which goes on running the
 * VM while the new one starts, waits for it to become readable in a
 * coroutine first.
 *
 * Received descriptors are not touched beyond close-on-exec: their file
 * status flags (O_NONBLOCK) are shared with the sending process, which
 * still uses them.
 */

#include "qemu/osdep.h"
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/coroutine.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "block/aio.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_CHANNEL_HEADER 16
/* Larger than any message: a bad length is refused */
#define CPR_CHANNEL_MAX_PAYLOAD (1 * GiB)
/*
 * A payload's buffer grows by at most this much ahead of the bytes that
 * came: a header alone cannot make this process allocate a gigabyte
 */
#define CPR_CHANNEL_GROW (16 * MiB)
/* An error message: a line or two */
#define CPR_CHANNEL_MAX_ERROR (64 * KiB)

static const char *const cpr_msg_names[] = {
    [CPR_MSG_STATE] = "state",
    [CPR_MSG_FDS] = "descriptors",
    [CPR_MSG_READY] = "ready",
    [CPR_MSG_DEVICES] = "devices",
    [CPR_MSG_COMMIT] = "commit",
    [CPR_MSG_ERROR] = "error",
};

static const char *cpr_msg_name(uint32_t type)
{
    return type < ARRAY_SIZE(cpr_msg_names) && cpr_msg_names[type] ?
           cpr_msg_names[type] : "unknown";
}

/* The socket path of "unix:PATH" */
static bool cpr_channel_addr(const char *channel, struct sockaddr_un *addr,
                             Error **errp)
{
    const char *path;

    if (!g_str_has_prefix(channel, "unix:") || !channel[5]) {
        error_setg(errp, "channel '%s' is not of the form unix:PATH",
                   channel);
        return false;
    }
    path = channel + 5;
    if (strlen(path) >= sizeof(addr->sun_path)) {
        error_setg(errp, "socket path '%s' is too long", path);
        return false;
    }
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    strcpy(addr->sun_path, path);
    return true;
}

int cpr_channel_connect(const char *channel, Error **errp)
{
    struct sockaddr_un addr;
    int fd;

    if (!cpr_channel_addr(channel, &addr, errp)) {
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot create a socket");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        error_setg_errno(errp, errno, "no new QEMU listens on '%s'",
                         addr.sun_path);
        close(fd);
        return -1;
    }
    return fd;
}

/* Only a process of this user, or root, may hand a VM over */
static bool cpr_channel_peer_ok(int fd, const char *what, Error **errp)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != geteuid() && cred.uid != 0)) {
        error_setg(errp, "'%s': the connecting process is not of this user",
                   what);
        return false;
    }
    trace_cpr_channel_accepted(cred.pid);
    return true;
}

/* "fd:N": a connected socket this process was started with */
static int cpr_channel_inherited(const char *channel, Error **errp)
{
    struct stat st;
    int fd;

    if (qemu_strtoi(channel + 3, NULL, 10, &fd) || fd <= STDERR_FILENO ||
        fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        error_setg(errp, "channel '%s' is not an inherited socket", channel);
        return -1;
    }
    if (!cpr_channel_peer_ok(fd, channel, errp)) {
        return -1;
    }
    qemu_set_cloexec(fd);
    return fd;
}

int cpr_channel_listen(const char *channel, int backlog, Error **errp)
{
    struct sockaddr_un addr, tmp;
    g_autofree char *tmp_path = NULL;
    struct stat st;
    mode_t umask_old;
    int lfd;

    if (!cpr_channel_addr(channel, &addr, errp)) {
        return -1;
    }
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        error_setg_errno(errp, errno, "cannot create a socket");
        return -1;
    }
    /* A socket left by an earlier process; never another kind of file */
    if (!lstat(addr.sun_path, &st) && S_ISSOCK(st.st_mode)) {
        unlink(addr.sun_path);
    }
    /*
     * Bound under a temporary name and renamed once it listens: whoever
     * waits for the path to appear can connect at once.
     */
    tmp = addr;
    tmp_path = g_strdup_printf("%s.%d", addr.sun_path, getpid());
    if (strlen(tmp_path) < sizeof(tmp.sun_path)) {
        strcpy(tmp.sun_path, tmp_path);     /* else no room: no rename */
        if (!lstat(tmp.sun_path, &st) && S_ISSOCK(st.st_mode)) {
            unlink(tmp.sun_path);
        }
    }
    umask_old = umask(0077);    /* only this user may connect */
    if (bind(lfd, (struct sockaddr *)&tmp, sizeof(tmp)) < 0) {
        umask(umask_old);
        error_setg_errno(errp, errno, "cannot listen on '%s'", addr.sun_path);
        close(lfd);
        return -1;
    }
    umask(umask_old);
    if (listen(lfd, backlog) < 0 ||
        (strcmp(tmp.sun_path, addr.sun_path) &&
         rename(tmp.sun_path, addr.sun_path) < 0)) {
        error_setg_errno(errp, errno, "cannot listen on '%s'", addr.sun_path);
        unlink(tmp.sun_path);
        close(lfd);
        return -1;
    }
    trace_cpr_channel_listen(addr.sun_path);
    return lfd;
}

int cpr_channel_accept_one(int lfd, const char *what, Error **errp)
{
    int fd;

    do {
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot accept on '%s'", what);
        return -1;
    }
    if (!cpr_channel_peer_ok(fd, what, errp)) {
        close(fd);
        return -1;
    }
    return fd;
}

int cpr_channel_accept(const char *channel, Error **errp)
{
    int lfd, fd;

    if (g_str_has_prefix(channel, "fd:")) {
        return cpr_channel_inherited(channel, errp);
    }
    lfd = cpr_channel_listen(channel, 1, errp);
    if (lfd < 0) {
        return -1;
    }
    fd = cpr_channel_accept_one(lfd, channel + 5, errp);
    /* One old process only: nobody else may connect */
    unlink(channel + 5);
    close(lfd);
    return fd;
}

bool cpr_channel_send(int fd, CprMsg type, const void *data, size_t len,
                      const int *fds, size_t nfds, Error **errp)
{
    uint8_t header[CPR_CHANNEL_HEADER];
    struct iovec iov[2] = {
        { .iov_base = header, .iov_len = sizeof(header) },
        { .iov_base = (void *)data, .iov_len = len },
    };
    size_t cmsg_len = CMSG_SPACE(sizeof(int) * nfds);
    g_autofree void *control = nfds ? g_malloc0(cmsg_len) : NULL;
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
    size_t left = sizeof(header) + len;

    assert(nfds <= CPR_CHANNEL_MAX_FDS);
    stl_be_p(header, type);
    stl_be_p(header + 4, nfds);
    stq_be_p(header + 8, len);
    if (nfds) {
        struct cmsghdr *cmsg;

        msg.msg_control = control;
        msg.msg_controllen = cmsg_len;
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
    }
    while (left) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            error_setg_errno(errp, errno, "cannot send the %s message",
                             cpr_msg_name(type));
            return false;
        }
        /* The descriptors went with the first bytes */
        msg.msg_control = NULL;
        msg.msg_controllen = 0;
        left -= n;
        while (n > 0) {
            size_t step = MIN((size_t)n, msg.msg_iov->iov_len);

            msg.msg_iov->iov_base = (uint8_t *)msg.msg_iov->iov_base + step;
            msg.msg_iov->iov_len -= step;
            n -= step;
            if (!msg.msg_iov->iov_len && msg.msg_iovlen > 1) {
                msg.msg_iov++;
                msg.msg_iovlen--;
            }
        }
    }
    trace_cpr_channel_send(cpr_msg_name(type), len, nfds);
    return true;
}

/* Keep the descriptors of @msg's SCM_RIGHTS in @fds; false if cut short */
static bool cpr_channel_take_fds(struct msghdr *msg, GArray *fds)
{
    struct cmsghdr *cmsg;

    for (cmsg = CMSG_FIRSTHDR(msg); cmsg; cmsg = CMSG_NXTHDR(msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);

            g_array_append_vals(fds, CMSG_DATA(cmsg), n);
        }
    }
    return !(msg->msg_flags & MSG_CTRUNC);
}

/* Read @len bytes into @p, descriptors into @fds; 0 at the end of file */
static ssize_t cpr_channel_read(int fd, uint8_t *p, size_t len, GArray *fds,
                                Error **errp)
{
    size_t cmsg_len = CMSG_SPACE(sizeof(int) * CPR_CHANNEL_MAX_FDS);
    g_autofree void *control = g_malloc0(cmsg_len);
    size_t done = 0;

    while (done < len) {
        struct iovec iov = { .iov_base = p + done, .iov_len = len - done };
        struct msghdr msg = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = control, .msg_controllen = cmsg_len,
        };
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            error_setg_errno(errp, errno, "cannot read from the socket");
            return -1;
        }
        if (!cpr_channel_take_fds(&msg, fds)) {
            error_setg(errp, "too many descriptors in one message");
            return -1;
        }
        if (n == 0) {
            if (done) {
                error_setg(errp, "the connection was closed in the middle "
                           "of a message");
                return -1;
            }
            return 0;
        }
        done += n;
    }
    return done;
}

static void cpr_channel_close_fds(GArray *fds)
{
    guint i;

    for (i = 0; i < fds->len; i++) {
        close(g_array_index(fds, int, i));
    }
    g_array_set_size(fds, 0);
}

bool cpr_channel_recv(int fd, CprMsg type, GByteArray **data, GArray **fds,
                      Error **errp)
{
    g_autoptr(GArray) got = g_array_new(false, false, sizeof(int));
    g_autoptr(GByteArray) payload = NULL;
    uint8_t header[CPR_CHANNEL_HEADER];
    uint32_t got_type, nfds;
    uint64_t len, step;
    ssize_t n;

    n = cpr_channel_read(fd, header, sizeof(header), got, errp);
    if (n <= 0) {
        if (n == 0) {
            error_setg(errp, "it closed the connection");
        }
        goto fail;
    }
    got_type = ldl_be_p(header);
    nfds = ldl_be_p(header + 4);
    len = ldq_be_p(header + 8);
    if (len > (got_type == CPR_MSG_ERROR ? CPR_CHANNEL_MAX_ERROR :
               CPR_CHANNEL_MAX_PAYLOAD) || nfds != got->len) {
        error_setg(errp, "it sent a malformed %s message",
                   cpr_msg_name(got_type));
        goto fail;
    }
    /* A state envelope is big: into the buffer prepared for it, if any */
    step = MIN(len, CPR_CHANNEL_GROW) + 1;
    payload = got_type == CPR_MSG_DEVICES ? cpr_devices_buffer(step) :
              g_byte_array_sized_new(step);
    while (payload->len < len) {
        guint at = payload->len;

        step = MIN(len - at, CPR_CHANNEL_GROW);
        g_byte_array_set_size(payload, at + step);
        n = cpr_channel_read(fd, payload->data + at, step, got, errp);
        if (n == 0) {
            error_setg(errp, "it closed the connection");
        }
        if (n <= 0) {
            error_prepend(errp, "%s message cut short: ",
                          cpr_msg_name(got_type));
            goto fail;
        }
    }
    if (nfds != got->len) {
        error_setg(errp, "it sent a malformed %s message",
                   cpr_msg_name(got_type));
        goto fail;
    }
    trace_cpr_channel_recv(cpr_msg_name(got_type), len, nfds);
    if (got_type == CPR_MSG_ERROR && got_type != type) {
        g_byte_array_append(payload, (const uint8_t *)"", 1);
        error_setg(errp, "%s", (const char *)payload->data);
        goto fail;
    }
    if (got_type != type) {
        error_setg(errp, "it sent a message of type '%s' instead of '%s'",
                   cpr_msg_name(got_type), cpr_msg_name(type));
        goto fail;
    }
    if (data) {
        *data = g_steal_pointer(&payload);
    }
    if (fds) {
        *fds = g_steal_pointer(&got);
    } else if (got->len) {
        error_setg(errp, "it sent descriptors with a %s message",
                   cpr_msg_name(got_type));
        goto fail;
    }
    return true;

fail:
    cpr_channel_close_fds(got);
    return false;
}

void cpr_channel_spin(int fd, int64_t max_ns)
{
    int64_t end = get_clock() + max_ns;
    struct pollfd pfd = { .fd = fd, .events = POLLIN };

    while (!poll(&pfd, 1, 0) && get_clock() < end) {
        sched_yield();
    }
}

static void cpr_channel_readable(void *opaque)
{
    aio_co_wake(opaque);
}

void cpr_channel_co_cancel(int fd, Coroutine *co)
{
    aio_set_fd_handler(iohandler_get_aio_context(), fd, false, NULL, NULL,
                       NULL, NULL, NULL);
    aio_co_wake(co);
}

void coroutine_fn cpr_channel_co_wait(int fd)
{
    /* Not the main AioContext, which nested aio_poll() calls also poll */
    AioContext *ctx = iohandler_get_aio_context();

    aio_set_fd_handler(ctx, fd, false, cpr_channel_readable, NULL, NULL,
                       NULL, qemu_coroutine_self());
    qemu_coroutine_yield();
    aio_set_fd_handler(ctx, fd, false, NULL, NULL, NULL, NULL, NULL);
}

bool cpr_channel_send_state(int fd, GByteArray *state, GArray *fds,
                            Error **errp)
{
    g_autoptr(GByteArray) msg = g_byte_array_new();
    uint32_t count = cpu_to_be32(fds->len);
    guint i;

    g_byte_array_append(msg, (uint8_t *)&count, 4);
    g_byte_array_append(msg, state->data, state->len);
    if (!cpr_channel_send(fd, CPR_MSG_STATE, msg->data, msg->len, NULL, 0,
                          errp)) {
        return false;
    }
    for (i = 0; i < fds->len; i += CPR_CHANNEL_MAX_FDS) {
        if (!cpr_channel_send(fd, CPR_MSG_FDS, NULL, 0,
                              &g_array_index(fds, int, i),
                              MIN(fds->len - i, CPR_CHANNEL_MAX_FDS),
                              errp)) {
            return false;
        }
    }
    return true;
}

int cpr_channel_recv_state(int fd, bool transfer, Error **errp)
{
    g_autoptr(GByteArray) state = NULL;
    g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
    uint32_t count;
    guint i;

    if (!cpr_channel_recv(fd, CPR_MSG_STATE, &state, NULL, errp)) {
        goto fail;
    }
    if (state->len < 4) {
        error_setg(errp, "it sent a malformed state message");
        goto fail;
    }
    count = ldl_be_p(state->data);
    while (fds->len < count) {
        g_autoptr(GArray) batch = NULL;

        if (!cpr_channel_recv(fd, CPR_MSG_FDS, NULL, &batch, errp)) {
            goto fail;
        }
        g_array_append_vals(fds, batch->data, batch->len);
    }
    if (fds->len != count) {
        error_setg(errp, "it sent %u descriptors, its state names %u",
                   fds->len, count);
        goto fail;
    }
    if (!cpr_state_receive(state->data + 4, state->len - 4, fds, transfer,
                           errp)) {
        goto fail;
    }
    return count;

fail:
    for (i = 0; i < fds->len; i++) {
        close(g_array_index(fds, int, i));
    }
    return -1;
}
