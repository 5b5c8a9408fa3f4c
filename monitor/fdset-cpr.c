/*
 * fd sets (add-fd) kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Management software hands files to QEMU as fd sets: "-add-fd fd=N,set=S"
 * on the command line or the add-fd command, and a device then opens
 * /dev/fdset/S, which duplicates a descriptor of the set.  -add-fd moves
 * descriptor N into the set under another number and closes N, so the new
 * process cannot take the sets from its command line again.
 *
 * Before execve, every descriptor of every set is registered in the CPR
 * state as "fdset:<set>" with its position in the set, its opaque string
 * as "fdset:<set>:<position>", and the list of sets as "fdsets".  The new
 * process rebuilds the sets from there instead of from -add-fd, before any
 * device is created, so /dev/fdset/S gives a duplicate of the same open
 * file as before (same file offset, same access rights).
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qapi/qapi-types-misc.h"
#include "migration/cpr.h"
#include "monitor/monitor.h"
#include "monitor/fdset-cpr.h"

#define FDSET_LIST "fdsets"

typedef struct FdsetWalk {
    bool keep;
    int64_t set;            /* the set of the previous descriptor */
    int pos;                /* its position in that set */
    GString *sets;          /* "S1,S2,..." */
} FdsetWalk;

static void fdset_cpr_one(int64_t set, int fd, const char *fd_opaque,
                          void *opaque)
{
    FdsetWalk *w = opaque;
    g_autofree char *name = g_strdup_printf("fdset:%" PRId64, set);
    g_autofree char *str = NULL;

    if (w->sets->len == 0 || set != w->set) {
        g_string_append_printf(w->sets, "%s%" PRId64,
                               w->sets->len ? "," : "", set);
        w->set = set;
        w->pos = 0;
    }
    str = g_strdup_printf("%s:%d", name, w->pos);
    cpr_keep_fd(name, w->pos, fd, w->keep);
    cpr_keep_str(str, fd_opaque, w->keep && fd_opaque);
    w->pos++;
}

/* The descriptors of every fd set (-add-fd, add-fd) cross execve */
static void monitor_fdset_cpr_keep(bool keep)
{
    FdsetWalk w = { .keep = keep, .sets = g_string_new(NULL) };

    monitor_fdsets_foreach(fdset_cpr_one, &w);
    cpr_keep_str(FDSET_LIST, w.sets->str, keep && w.sets->len);
    g_string_free(w.sets, true);
}
CPR_KEEPER(monitor_fdset_cpr_keep)

void monitor_fdset_cpr_restore(void)
{
    g_autofree char *list = cpr_take_str(FDSET_LIST);
    g_auto(GStrv) sets = g_strsplit(list ?: "", ",", -1);
    int i, pos;

    for (i = 0; sets[i] && sets[i][0]; i++) {
        g_autofree char *name = NULL;
        int64_t set;
        int fd;

        if (qemu_strtoi64(sets[i], NULL, 10, &set) < 0 || set < 0) {
            warn_report("CPR state names fd set '%s', which is not a set "
                        "number; its descriptors are not restored", sets[i]);
            continue;
        }
        name = g_strdup_printf("fdset:%" PRId64, set);

        for (pos = 0; (fd = cpr_take_fd(name, pos)) >= 0; pos++) {
            g_autofree char *str = g_strdup_printf("%s:%d", name, pos);
            g_autofree char *fd_opaque = cpr_take_str(str);
            Error *err = NULL;
            AddfdInfo *info;

            info = monitor_fdset_add_fd(fd, true, set, !!fd_opaque,
                                        fd_opaque, &err);
            if (!info) {
                warn_reportf_err(err, "fd set %" PRId64 " loses a "
                                 "descriptor: ", set);
                close(fd);
            }
            qapi_free_AddfdInfo(info);
        }
    }
}
