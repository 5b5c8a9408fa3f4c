/*
 * CPR state: the registry of descriptors that cross execve
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Before execve the registry is written into a memfd whose number is
 * passed to the new process in the environment variable CPR_STATE_ENV.
 * Layout (integers big-endian):
 *
 *   "QEMUCPRS"  be32 version  be32 helper-pid  be32 count
 *   count x { be32 id  be32 fd  be16 name-length  name bytes
 *             be32 value-length  value bytes }
 *
 * An entry holds a descriptor (fd >= 0) or a string value (fd = -1).
 *
 * helper-pid is the process holding the old address space (cpr-mm.c),
 * which the new process reaps, or 0.
 *
 * Only registered descriptors and the state memfd itself lose
 * FD_CLOEXEC; every other descriptor above stderr gets it.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/memfd.h"
#include "qemu/lockable.h"
#include "qemu/thread.h"
#include "qapi/error.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_STATE_MAGIC "QEMUCPRS"
#define CPR_STATE_VERSION 3

typedef struct CprFd {
    char *name;
    int id;
    int fd;                     /* -1 for a string entry */
    char *value;                /* NULL for a descriptor entry */
} CprFd;

/* A descriptor whose FD_CLOEXEC flag was changed for execve */
typedef struct CprFdFlags {
    int fd;
    int flags;
} CprFdFlags;

static GPtrArray *cpr_outgoing;     /* registered: kept across next exec */
static GPtrArray *cpr_incoming;     /* inherited from the previous process */
/* Monitors claim their descriptors in the monitor I/O thread */
static QemuMutex cpr_incoming_lock;
static bool cpr_incoming_pending;
static bool cpr_recovery;
static bool cpr_recovery_reply_sent;
static pid_t cpr_helper_pid;
static char **cpr_argv;
static char *cpr_exec_path;

static int cpr_state_fd = -1;       /* while an execve is being attempted */
static GArray *cpr_changed_flags;
static GArray *cpr_closing_fds;     /* what the next execve closes */

static void cpr_fd_free(gpointer p)
{
    CprFd *elem = p;

    g_free(elem->name);
    g_free(elem->value);
    g_free(elem);
}

static GPtrArray *cpr_fd_list(GPtrArray **list)
{
    if (!*list) {
        *list = g_ptr_array_new_with_free_func(cpr_fd_free);
    }
    return *list;
}

static int cpr_fd_index(GPtrArray *list, const char *name, int id)
{
    guint i;

    for (i = 0; list && i < list->len; i++) {
        CprFd *elem = g_ptr_array_index(list, i);

        if (elem->id == id && !strcmp(elem->name, name)) {
            return i;
        }
    }
    return -1;
}

static void cpr_save(const char *name, int id, int fd, const char *value)
{
    GPtrArray *list = cpr_fd_list(&cpr_outgoing);
    int i = cpr_fd_index(list, name, id);
    CprFd *elem;

    if (i >= 0) {
        g_ptr_array_remove_index(list, i);
    }
    elem = g_new0(CprFd, 1);
    elem->name = g_strdup(name);
    elem->id = id;
    elem->fd = fd;
    elem->value = g_strdup(value);
    g_ptr_array_add(list, elem);
}

void cpr_save_fd(const char *name, int id, int fd)
{
    trace_cpr_save_fd(name, id, fd);
    cpr_save(name, id, fd, NULL);
}

void cpr_save_str(const char *name, const char *value)
{
    trace_cpr_save_str(name, value);
    cpr_save(name, 0, -1, value);
}

void cpr_delete_fd(const char *name, int id)
{
    int i = cpr_fd_index(cpr_outgoing, name, id);

    trace_cpr_delete_fd(name, id);
    if (i >= 0) {
        g_ptr_array_remove_index(cpr_outgoing, i);
    }
}

int cpr_find_fd(const char *name, int id)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    int i = cpr_fd_index(cpr_incoming, name, id);
    int fd = -1;

    if (i >= 0) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        fd = elem->fd;
        g_ptr_array_remove_index(cpr_incoming, i);
    }
    trace_cpr_find_fd(name, id, fd);
    return fd;
}

bool cpr_has_fd(const char *name, int id)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);

    return cpr_fd_index(cpr_incoming, name, id) >= 0;
}

char *cpr_find_str(const char *name)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    int i = cpr_fd_index(cpr_incoming, name, 0);
    char *value = NULL;

    if (i >= 0) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        value = g_steal_pointer(&elem->value);
        g_ptr_array_remove_index(cpr_incoming, i);
    }
    return value;
}

bool cpr_is_incoming(void)
{
    return cpr_incoming_pending;
}

bool cpr_is_recovery(void)
{
    return cpr_recovery;
}

bool cpr_recovery_replied(void)
{
    return cpr_recovery_reply_sent;
}

void cpr_forget_fd(const char *name, int id)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    int i = cpr_fd_index(cpr_incoming, name, id);

    if (i >= 0) {
        g_ptr_array_remove_index(cpr_incoming, i);
    }
}

char **cpr_get_argv(void)
{
    return cpr_argv;
}

const char *cpr_get_exec_path(void)
{
    return cpr_exec_path;
}

/* Serialization */

static GByteArray *cpr_state_serialize(void)
{
    GByteArray *buf = g_byte_array_new();
    GPtrArray *list = cpr_fd_list(&cpr_outgoing);
    uint32_t be32;
    uint16_t be16;
    guint i;

    g_byte_array_append(buf, (const guint8 *)CPR_STATE_MAGIC, 8);
    be32 = cpu_to_be32(CPR_STATE_VERSION);
    g_byte_array_append(buf, (guint8 *)&be32, 4);
    be32 = 0;                   /* helper pid: cpr_state_set_helper() */
    g_byte_array_append(buf, (guint8 *)&be32, 4);
    be32 = cpu_to_be32(list->len);
    g_byte_array_append(buf, (guint8 *)&be32, 4);
    for (i = 0; i < list->len; i++) {
        CprFd *elem = g_ptr_array_index(list, i);
        size_t len = strlen(elem->name);

        be32 = cpu_to_be32(elem->id);
        g_byte_array_append(buf, (guint8 *)&be32, 4);
        be32 = cpu_to_be32(elem->fd);
        g_byte_array_append(buf, (guint8 *)&be32, 4);
        be16 = cpu_to_be16(len);
        g_byte_array_append(buf, (guint8 *)&be16, 2);
        g_byte_array_append(buf, (const guint8 *)elem->name, len);
        len = elem->value ? strlen(elem->value) : 0;
        be32 = cpu_to_be32(len);
        g_byte_array_append(buf, (guint8 *)&be32, 4);
        g_byte_array_append(buf, (const guint8 *)elem->value, len);
    }
    return buf;
}

static bool cpr_state_parse(const uint8_t *p, size_t size, Error **errp)
{
    const uint8_t *end = p + size;
    uint32_t version, count, i;

    if (size < 20 || memcmp(p, CPR_STATE_MAGIC, 8)) {
        error_setg(errp, "inherited CPR state has no valid header");
        return false;
    }
    version = ldl_be_p(p + 8);
    cpr_helper_pid = ldl_be_p(p + 12);
    count = ldl_be_p(p + 16);
    if (version != CPR_STATE_VERSION) {
        error_setg(errp, "inherited CPR state has version %u, expected %u",
                   version, CPR_STATE_VERSION);
        return false;
    }
    p += 20;
    for (i = 0; i < count; i++) {
        CprFd *elem;
        uint16_t len;
        uint32_t vlen;

        if (end - p < 10) {
            goto truncated;
        }
        len = lduw_be_p(p + 8);
        if (end - p < 14 + len) {
            goto truncated;
        }
        vlen = ldl_be_p(p + 10 + len);
        if (end - p - 14 - len < vlen) {
            goto truncated;
        }
        elem = g_new0(CprFd, 1);
        elem->id = (int32_t)ldl_be_p(p);
        elem->fd = (int32_t)ldl_be_p(p + 4);
        elem->name = g_strndup((const char *)p + 10, len);
        if (elem->fd < 0) {
            elem->value = g_strndup((const char *)p + 14 + len, vlen);
        }
        g_ptr_array_add(cpr_fd_list(&cpr_incoming), elem);
        trace_cpr_state_inherit(elem->name, elem->id, elem->fd);
        p += 14 + len + vlen;
    }
    return true;

truncated:
    error_setg(errp, "inherited CPR state is truncated at entry %u of %u",
               i, count);
    return false;
}

static bool cpr_state_read(int fd, Error **errp)
{
    g_autofree uint8_t *buf = NULL;
    struct stat st;
    ssize_t n;

    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "cannot inspect inherited CPR state");
        return false;
    }
    buf = g_malloc(st.st_size + 1);
    n = pread(fd, buf, st.st_size, 0);
    if (n != st.st_size) {
        error_setg_errno(errp, n < 0 ? errno : EIO,
                         "cannot read inherited CPR state");
        return false;
    }
    return cpr_state_parse(buf, n, errp);
}

void cpr_init(int argc, char **argv, Error **errp)
{
    const char *env = getenv(CPR_STATE_ENV);
    int i, fd;

    qemu_mutex_init(&cpr_incoming_lock);
    cpr_argv = g_new0(char *, argc + 1);
    for (i = 0; i < argc; i++) {
        cpr_argv[i] = g_strdup(argv[i]);
    }
    /* The path, not the inode: an operator may have replaced the file. */
    cpr_exec_path = g_file_read_link("/proc/self/exe", NULL);
    if (!cpr_exec_path) {
        cpr_exec_path = g_strdup(argv[0]);
    }

    if (!env) {
        return;
    }
    if (qemu_strtoi(env, NULL, 10, &fd) || fd < 0) {
        error_setg(errp, "%s='%s' does not name a descriptor",
                   CPR_STATE_ENV, env);
        return;
    }
    g_unsetenv(CPR_STATE_ENV);
    if (!cpr_state_read(fd, errp)) {
        close(fd);
        return;
    }
    close(fd);
    /* Kept for this process alone: not for the children it may run. */
    for (i = 0; cpr_incoming && i < cpr_incoming->len; i++) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        int flags = elem->fd >= 0 ? fcntl(elem->fd, F_GETFD) : -1;

        /* (a process taking the VM back lacks the helper's pipe) */
        if (flags >= 0) {
            fcntl(elem->fd, F_SETFD, flags | FD_CLOEXEC);
        }
    }
    cpr_incoming_pending = true;
    if (getenv(CPR_RECOVERY_ENV)) {
        cpr_recovery = true;
        cpr_recovery_reply_sent = !strcmp(getenv(CPR_RECOVERY_ENV), "2");
        g_unsetenv(CPR_RECOVERY_ENV);
    }
    cpr_mm_incoming(cpr_helper_pid);
    trace_cpr_init_incoming(cpr_incoming ? cpr_incoming->len : 0);
}

void cpr_state_incoming_done(void)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    guint i;

    for (i = 0; cpr_incoming && i < cpr_incoming->len; i++) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        trace_cpr_state_close_unclaimed(elem->name, elem->id, elem->fd);
        if (elem->fd >= 0) {
            close(elem->fd);
        }
    }
    if (cpr_incoming) {
        g_ptr_array_set_size(cpr_incoming, 0);
    }
    cpr_incoming_pending = false;
}

/* execve preparation */

static bool cpr_fd_is_registered(int fd)
{
    guint i;

    for (i = 0; cpr_outgoing && i < cpr_outgoing->len; i++) {
        CprFd *elem = g_ptr_array_index(cpr_outgoing, i);

        if (elem->fd >= 0 && elem->fd == fd) {
            return true;
        }
    }
    return fd == cpr_state_fd;
}

static bool cpr_fd_set_cloexec(int fd, bool cloexec, Error **errp)
{
    int flags = fcntl(fd, F_GETFD);
    int want;

    if (flags < 0) {
        error_setg_errno(errp, errno, "cannot read flags of descriptor %d",
                         fd);
        return false;
    }
    want = cloexec ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    if (want == flags) {
        return true;
    }
    if (fcntl(fd, F_SETFD, want) < 0) {
        error_setg_errno(errp, errno, "cannot set flags of descriptor %d",
                         fd);
        return false;
    }
    g_array_append_val(cpr_changed_flags, ((CprFdFlags){ fd, flags }));
    return true;
}

static bool cpr_fds_set_cloexec(Error **errp)
{
    g_autoptr(GError) gerr = NULL;
    g_autoptr(GDir) dir = g_dir_open("/proc/self/fd", 0, &gerr);
    g_autoptr(GArray) fds = g_array_new(false, false, sizeof(int));
    const char *name;
    bool kept;
    guint i;

    if (!dir) {
        error_setg(errp, "cannot list open descriptors: %s", gerr->message);
        return false;
    }
    /* Collect first: the directory's own descriptor is in the listing. */
    while ((name = g_dir_read_name(dir))) {
        int fd;

        if (!qemu_strtoi(name, NULL, 10, &fd) && fd > STDERR_FILENO) {
            g_array_append_val(fds, fd);
        }
    }
    g_clear_pointer(&dir, g_dir_close);

    for (i = 0; i < fds->len; i++) {
        int fd = g_array_index(fds, int, i);

        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            continue;           /* the listing's own descriptor */
        }
        kept = cpr_fd_is_registered(fd);
        if (!kept) {
            g_array_append_val(cpr_closing_fds, fd);
        }
        if (!cpr_fd_set_cloexec(fd, !kept, errp)) {
            return false;
        }
    }
    return true;
}

GArray *cpr_state_exec_closing_fds(void)
{
    return cpr_closing_fds;
}

bool cpr_state_exec_prepare(Error **errp)
{
    g_autoptr(GByteArray) buf = cpr_state_serialize();
    g_autofree char *num = NULL;

    assert(cpr_state_fd < 0);
    cpr_changed_flags = g_array_new(false, false, sizeof(CprFdFlags));
    cpr_closing_fds = g_array_new(false, false, sizeof(int));

    cpr_state_fd = qemu_memfd_create("qemu-cpr-state", buf->len, false, 0, 0,
                                     errp);
    if (cpr_state_fd < 0) {
        goto fail;
    }
    if (pwrite(cpr_state_fd, buf->data, buf->len, 0) != buf->len) {
        error_setg_errno(errp, errno, "cannot write CPR state");
        goto fail;
    }
    if (!cpr_fds_set_cloexec(errp)) {
        goto fail;
    }
    num = g_strdup_printf("%d", cpr_state_fd);
    g_setenv(CPR_STATE_ENV, num, true);
    trace_cpr_state_exec_prepare(cpr_outgoing ? cpr_outgoing->len : 0,
                                 cpr_state_fd);
    return true;

fail:
    cpr_state_exec_abort();
    return false;
}

void cpr_state_set_helper(pid_t pid)
{
    uint32_t be32 = cpu_to_be32(pid);

    if (pwrite(cpr_state_fd, &be32, 4, 12) != 4) {
        /* the new process just does not reap it; init will */
    }
}

void cpr_state_exec_abort(void)
{
    guint i;

    g_unsetenv(CPR_STATE_ENV);
    for (i = 0; cpr_changed_flags && i < cpr_changed_flags->len; i++) {
        CprFdFlags *f = &g_array_index(cpr_changed_flags, CprFdFlags, i);

        if (f->fd != cpr_state_fd) {
            fcntl(f->fd, F_SETFD, f->flags);
        }
    }
    if (cpr_changed_flags) {
        g_array_free(cpr_changed_flags, true);
        cpr_changed_flags = NULL;
    }
    if (cpr_closing_fds) {
        g_array_free(cpr_closing_fds, true);
        cpr_closing_fds = NULL;
    }
    if (cpr_state_fd >= 0) {
        close(cpr_state_fd);
        cpr_state_fd = -1;
    }
}
