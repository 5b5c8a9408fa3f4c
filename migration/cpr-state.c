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
 *   "QEMUCPRS"  be32 version  be32 helper-pid  be32 length
 *   length bytes: vmstate "cpr-state", the entries, ended by QEMU_VM_EOF
 *
 * An entry has a name, an id, and a descriptor (fd >= 0) or a string
 * value (fd = -1).
 *
 * helper-pid is the process holding the old address space (cpr-mm.c),
 * which the new process reaps, or 0; it is written last, once the helper
 * runs.
 *
 * Only registered descriptors and the state memfd itself lose
 * FD_CLOEXEC; every other descriptor above stderr gets it.
 *
 * In transfer mode the same bytes go over the socket to a process
 * started with "-incoming cpr:CHANNEL", followed by the registered
 * descriptors in registry order (cpr-transfer.c); the receiver puts its
 * own numbers for them into the entries.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/memfd.h"
#include "qemu/lockable.h"
#include "qemu/thread.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_STATE_MAGIC "QEMUCPRS"
#define CPR_STATE_PREFIX 20     /* magic, version, helper pid, length */

typedef struct CprFd {
    char *name;
    int id;
    int fd;                     /* -1 for a value entry */
    uint8_t *value;             /* NULL for a descriptor entry */
    size_t value_len;           /* a string's with its NUL */
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
static bool cpr_transferred;        /* the state came over a channel */
static char *cpr_incoming_channel;  /* of -incoming cpr:CHANNEL */
static char *cpr_fork_channel;      /* of -incoming cpr-fork:CHANNEL */
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

static void cpr_save(const char *name, int id, int fd, const void *value,
                     size_t value_len)
{
    GPtrArray *list = cpr_fd_list(&cpr_outgoing);
    int i = cpr_fd_index(list, name, id);
    CprFd *elem;

    /* Registered again: in its place, so the registry's order stays */
    if (i >= 0) {
        elem = g_ptr_array_index(list, i);
        g_free(elem->value);
    } else {
        elem = g_new0(CprFd, 1);
        elem->name = g_strdup(name);
        elem->id = id;
        g_ptr_array_add(list, elem);
    }
    elem->fd = fd;
    elem->value = g_memdup2(value, value_len);
    elem->value_len = value_len;
}

void cpr_save_fd(const char *name, int id, int fd)
{
    trace_cpr_save_fd(name, id, fd);
    cpr_save(name, id, fd, NULL, 0);
}

void cpr_save_str(const char *name, const char *value)
{
    trace_cpr_save_str(name, value);
    cpr_save(name, 0, -1, value, strlen(value) + 1);
}

void cpr_save_vmstate(const char *name, const VMStateDescription *vmsd,
                      void *opaque)
{
    g_autoptr(GByteArray) b = g_byte_array_new();

    cpr_vmstate_save(vmsd, opaque, b);
    cpr_save(name, 0, -1, b->data, b->len);
}

void cpr_delete_fd(const char *name, int id)
{
    int i = cpr_fd_index(cpr_outgoing, name, id);

    trace_cpr_delete_fd(name, id);
    if (i >= 0) {
        g_ptr_array_remove_index(cpr_outgoing, i);
    }
}

void cpr_keep_fd(const char *name, int id, int fd, bool keep)
{
    if (keep) {
        cpr_save_fd(name, id, fd);
    } else {
        cpr_delete_fd(name, id);
    }
}

void cpr_keep_str(const char *name, const char *value, bool keep)
{
    if (keep) {
        cpr_save_str(name, value);
    } else {
        cpr_delete_fd(name, 0);
    }
}

int cpr_take_fd(const char *name, int id)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    int i = cpr_fd_index(cpr_incoming, name, id);
    int fd = -1;

    if (i >= 0) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        fd = elem->fd;
        g_ptr_array_remove_index(cpr_incoming, i);
    }
    trace_cpr_take_fd(name, id, fd);
    return fd;
}

bool cpr_has_fd(const char *name, int id)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);

    return cpr_fd_index(cpr_incoming, name, id) >= 0;
}

/* The value inherited under @name, removed from the registry, or NULL */
static uint8_t *cpr_take_value(const char *name, size_t *len)
{
    QEMU_LOCK_GUARD(&cpr_incoming_lock);
    int i = cpr_fd_index(cpr_incoming, name, 0);
    uint8_t *value = NULL;

    if (i >= 0) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        value = g_steal_pointer(&elem->value);
        *len = elem->value_len;
        g_ptr_array_remove_index(cpr_incoming, i);
    }
    return value;
}

char *cpr_take_str(const char *name)
{
    size_t len;
    g_autofree uint8_t *value = cpr_take_value(name, &len);

    if (value && !cpr_vmstate_string_ok(value, len)) {
        warn_report("CPR state: '%s' is not a string", name);
        return NULL;
    }
    return (char *)g_steal_pointer(&value);
}

bool cpr_take_vmstate(const char *name, const VMStateDescription *vmsd,
                      void *opaque, Error **errp)
{
    size_t len;
    g_autofree uint8_t *value = cpr_take_value(name, &len);

    if (!value) {
        error_setg(errp, "CPR state has no '%s'", name);
        return false;
    }
    if (!cpr_vmstate_load(vmsd, opaque, value, len)) {
        error_setg(errp, "CPR state: '%s' cannot be read as '%s'", name,
                   vmsd->name);
        return false;
    }
    return true;
}

bool cpr_is_incoming(void)
{
    return cpr_incoming_pending;
}

bool cpr_is_exec_incoming(void)
{
    return cpr_incoming_pending && !cpr_transferred;
}

bool cpr_takes_vm_over(void)
{
    return cpr_incoming_pending || cpr_incoming_channel || cpr_fork_channel;
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

/* An entry as vmstate: the strings with their NUL */
typedef struct CprFdRecord {
    int32_t id;
    int32_t fd;
    uint32_t name_len;
    uint8_t *name;
    uint32_t value_len;         /* 0: no value */
    uint8_t *value;
} CprFdRecord;

typedef struct CprStateRecord {
    int32_t count;
    CprFdRecord *fds;
} CprStateRecord;

/* Bounds checked before a length or count sizes an allocation */
#define CPR_STATE_MAX_ENTRIES   65536
#define CPR_STATE_MAX_NAME      4096
#define CPR_STATE_MAX_VALUE     (16 * MiB)
/* Much more than the registry of any VM: a bad descriptor is refused */
#define CPR_STATE_MAX_SIZE      (256 * MiB)

/*
 * The records a load has begun: vmstate does not zero the array it
 * allocates, so only these may be freed after a failed load
 */
static int cpr_fd_records_begun;

/* An element of the array vmstate allocates: start from zero */
static int cpr_fd_record_pre_load(void *opaque)
{
    memset(opaque, 0, sizeof(CprFdRecord));
    cpr_fd_records_begun++;
    return 0;
}

static bool cpr_fd_record_name_len_ok(void *opaque, int version_id)
{
    return ((CprFdRecord *)opaque)->name_len <= CPR_STATE_MAX_NAME;
}

static bool cpr_fd_record_value_len_ok(void *opaque, int version_id)
{
    return ((CprFdRecord *)opaque)->value_len <= CPR_STATE_MAX_VALUE;
}

static int cpr_fd_record_post_load(void *opaque, int version_id)
{
    CprFdRecord *r = opaque;

    return cpr_vmstate_string_ok(r->name, r->name_len) ? 0 : -EINVAL;
}

static const VMStateDescription vmstate_cpr_fd = {
    .name = "cpr-fd",
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_load = cpr_fd_record_pre_load,
    .post_load = cpr_fd_record_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_INT32(id, CprFdRecord),
        VMSTATE_INT32(fd, CprFdRecord),
        VMSTATE_UINT32(name_len, CprFdRecord),
        VMSTATE_VALIDATE("name_len", cpr_fd_record_name_len_ok),
        VMSTATE_VBUFFER_ALLOC_UINT32(name, CprFdRecord, 0, NULL, name_len),
        VMSTATE_UINT32(value_len, CprFdRecord),
        VMSTATE_VALIDATE("value_len", cpr_fd_record_value_len_ok),
        VMSTATE_VBUFFER_ALLOC_UINT32(value, CprFdRecord, 0, NULL,
                                     value_len),
        VMSTATE_END_OF_LIST()
    },
};

static bool cpr_state_record_count_ok(void *opaque, int version_id)
{
    CprStateRecord *r = opaque;

    return r->count >= 0 && r->count <= CPR_STATE_MAX_ENTRIES;
}

static const VMStateDescription vmstate_cpr_state = {
    .name = "cpr-state",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (VMStateField[]) {
        VMSTATE_INT32(count, CprStateRecord),
        VMSTATE_VALIDATE("count", cpr_state_record_count_ok),
        VMSTATE_STRUCT_VARRAY_ALLOC(fds, CprStateRecord, count, 0,
                                    vmstate_cpr_fd, CprFdRecord),
        VMSTATE_END_OF_LIST()
    },
};

/* The registry format of @n records */
static GByteArray *cpr_state_serialize_records(CprFdRecord *fds, guint n)
{
    GByteArray *buf = g_byte_array_new();
    CprStateRecord rec = { .count = n, .fds = fds };
    uint8_t prefix[CPR_STATE_PREFIX];

    memcpy(prefix, CPR_STATE_MAGIC, 8);
    stl_be_p(prefix + 8, CPR_STATE_VERSION);
    stl_be_p(prefix + 12, 0);   /* helper pid: cpr_state_set_helper() */
    g_byte_array_append(buf, prefix, sizeof(prefix));
    cpr_vmstate_save(&vmstate_cpr_state, &rec, buf);
    stl_be_p(buf->data + 16, buf->len - CPR_STATE_PREFIX);
    return buf;
}

GByteArray *cpr_state_serialize(void)
{
    GPtrArray *list = cpr_fd_list(&cpr_outgoing);
    g_autofree CprFdRecord *fds = g_new0(CprFdRecord, list->len);
    guint i;

    for (i = 0; i < list->len; i++) {
        CprFd *elem = g_ptr_array_index(list, i);

        fds[i] = (CprFdRecord) {
            .id = elem->id, .fd = elem->fd,
            .name_len = strlen(elem->name) + 1,
            .name = (uint8_t *)elem->name,
            .value_len = elem->value_len,
            .value = elem->value,
        };
    }
    return cpr_state_serialize_records(fds, list->len);
}

GByteArray *cpr_state_serialize_fds(char **names, GArray *ids, GArray *fds)
{
    g_autofree CprFdRecord *recs = g_new0(CprFdRecord, fds->len);
    guint i;

    for (i = 0; i < fds->len; i++) {
        recs[i] = (CprFdRecord) {
            .id = g_array_index(ids, int, i),
            .fd = g_array_index(fds, int, i),
            .name_len = strlen(names[i]) + 1,
            .name = (uint8_t *)names[i],
        };
    }
    return cpr_state_serialize_records(recs, fds->len);
}

static void cpr_state_record_free(CprStateRecord *rec)
{
    int i;

    for (i = 0; rec->fds && i < rec->count; i++) {
        g_free(rec->fds[i].name);
        g_free(rec->fds[i].value);
    }
    g_free(rec->fds);
}

static bool cpr_state_parse(const uint8_t *p, size_t size, Error **errp)
{
    CprStateRecord rec = { 0 };
    uint32_t version;
    int i;

    if (size < CPR_STATE_PREFIX || memcmp(p, CPR_STATE_MAGIC, 8)) {
        error_setg(errp, "inherited CPR state has no valid header");
        return false;
    }
    version = ldl_be_p(p + 8);
    if (version != CPR_STATE_VERSION) {
        error_setg(errp, "inherited CPR state has version %u, expected %u",
                   version, CPR_STATE_VERSION);
        return false;
    }
    cpr_helper_pid = ldl_be_p(p + 12);
    if (ldl_be_p(p + 16) != size - CPR_STATE_PREFIX) {
        error_setg(errp, "inherited CPR state is %zu bytes, its header "
                   "says %u", size - CPR_STATE_PREFIX, ldl_be_p(p + 16));
        return false;
    }
    cpr_fd_records_begun = 0;
    if (!cpr_vmstate_load(&vmstate_cpr_state, &rec, p + CPR_STATE_PREFIX,
                          size - CPR_STATE_PREFIX)) {
        /* The entries a failed load did not reach are not initialised */
        rec.count = rec.fds ? cpr_fd_records_begun : 0;
        cpr_state_record_free(&rec);
        error_setg(errp, "inherited CPR state is corrupt");
        return false;
    }
    for (i = 0; i < rec.count; i++) {
        CprFdRecord *r = &rec.fds[i];
        CprFd *elem = g_new0(CprFd, 1);

        elem->id = r->id;
        elem->fd = r->fd;
        elem->name = (char *)g_steal_pointer(&r->name);
        elem->value = g_steal_pointer(&r->value);
        elem->value_len = r->value_len;
        g_ptr_array_add(cpr_fd_list(&cpr_incoming), elem);
        trace_cpr_state_inherit(elem->name, elem->id, elem->fd);
    }
    cpr_state_record_free(&rec);
    return true;
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
    if (!S_ISREG(st.st_mode) || st.st_size > CPR_STATE_MAX_SIZE) {
        error_setg(errp, "inherited CPR state is not a memfd of at most %"
                   PRId64 " bytes", (int64_t)CPR_STATE_MAX_SIZE);
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

GArray *cpr_state_outgoing_fds(void)
{
    GArray *fds = g_array_new(false, false, sizeof(int));
    guint i;

    for (i = 0; cpr_outgoing && i < cpr_outgoing->len; i++) {
        CprFd *elem = g_ptr_array_index(cpr_outgoing, i);

        if (elem->fd >= 0) {
            g_array_append_val(fds, elem->fd);
        }
    }
    return fds;
}

bool cpr_state_receive(const uint8_t *p, size_t len, GArray *fds,
                       bool transfer, Error **errp)
{
    guint i, next = 0;

    if (!cpr_state_parse(p, len, errp)) {
        return false;
    }
    for (i = 0; cpr_incoming && i < cpr_incoming->len; i++) {
        CprFd *elem = g_ptr_array_index(cpr_incoming, i);

        if (elem->fd < 0) {
            continue;
        }
        if (next == fds->len) {
            break;
        }
        elem->fd = g_array_index(fds, int, next++);
        trace_cpr_state_inherit(elem->name, elem->id, elem->fd);
    }
    if (i < (cpr_incoming ? cpr_incoming->len : 0) || next != fds->len) {
        error_setg(errp, "the CPR state names other descriptors than the "
                   "%u sent", fds->len);
        /* The entries keep the sender's numbers: not ours to close */
        if (cpr_incoming) {
            g_ptr_array_set_size(cpr_incoming, 0);
        }
        return false;
    }
    cpr_incoming_pending = true;
    cpr_transferred = transfer;
    trace_cpr_init_incoming(cpr_incoming ? cpr_incoming->len : 0);
    return true;
}

bool cpr_state_transferred(void)
{
    return cpr_transferred;
}

const char *cpr_state_incoming_channel(void)
{
    return cpr_incoming_channel;
}

const char *cpr_state_fork_channel(void)
{
    return cpr_fork_channel;
}

/*
 * "-incoming cpr:CHANNEL" or "-incoming cpr-fork:CHANNEL" (or
 * --incoming): not passed on to an execve
 */
static bool cpr_state_incoming_arg(char **argv, int i)
{
    char **channel;
    const char *p;

    if (strcmp(argv[i], "-incoming") && strcmp(argv[i], "--incoming")) {
        return false;
    }
    if (!argv[i + 1]) {
        return false;
    }
    if (g_str_has_prefix(argv[i + 1], "cpr:")) {
        channel = &cpr_incoming_channel;
        p = argv[i + 1] + 4;
    } else if (g_str_has_prefix(argv[i + 1], "cpr-fork:")) {
        channel = &cpr_fork_channel;
        p = argv[i + 1] + 9;
    } else {
        return false;
    }
    g_free(*channel);
    *channel = g_strdup(p);
    return true;
}

void cpr_state_init(int argc, char **argv, Error **errp)
{
    const char *env = getenv(CPR_STATE_ENV);
    int i, n, fd;

    qemu_mutex_init(&cpr_incoming_lock);
    cpr_argv = g_new0(char *, argc + 1);
    for (i = n = 0; i < argc; i++) {
        if (cpr_state_incoming_arg(argv, i)) {
            i++;
            continue;
        }
        cpr_argv[n++] = g_strdup(argv[i]);
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

pid_t cpr_state_get_helper(void)
{
    return cpr_helper_pid;
}

bool cpr_state_set_helper(pid_t pid, Error **errp)
{
    uint32_t be32 = cpu_to_be32(pid);

    if (pwrite(cpr_state_fd, &be32, 4, 12) != 4) {
        error_setg_errno(errp, errno, "cannot write CPR state");
        return false;
    }
    return true;
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
