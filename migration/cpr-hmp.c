/*
 * CPR: the human monitor commands (cprsave, cprload, the snapshot
 * commands, info cpr)
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "monitor/hmp.h"
#include "monitor/monitor.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-cpr.h"
#include "qapi/qmp/qdict.h"
#include "qapi/util.h"

void hmp_cprsave(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;
    const char *binary = qdict_get_try_str(qdict, "binary");
    int mode = qapi_enum_parse(&CprMode_lookup, qdict_get_str(qdict, "mode"),
                               -1, &err);

    if (mode >= 0) {
        qmp_cprsave(true, qdict_get_str(qdict, "file"), mode, !!binary,
                    binary, false, false, false, NULL, false, false, &err);
    }
    hmp_handle_error(mon, err);
}

void hmp_cprload(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_cprload(qdict_get_str(qdict, "file"), &err);
    hmp_handle_error(mon, err);
}

void hmp_cpr_snapshot(Monitor *mon, const QDict *qdict)
{
    const char *exclude = qdict_get_try_str(qdict, "exclude");
    g_autoptr(strList) ids = NULL;
    g_auto(GStrv) names = NULL;
    Error *err = NULL;
    int i;

    if (exclude) {
        names = g_strsplit(exclude, ",", -1);
        for (i = g_strv_length(names) - 1; i >= 0; i--) {
            QAPI_LIST_PREPEND(ids, g_strdup(names[i]));
        }
    }
    qmp_cpr_snapshot(!!ids, ids, &err);
    hmp_handle_error(mon, err);
}

void hmp_cpr_restore(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_cpr_restore(false, false, false, false, &err);
    hmp_handle_error(mon, err);
}

void hmp_cpr_snapshot_drop(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_cpr_snapshot_drop(&err);
    hmp_handle_error(mon, err);
}

void hmp_info_cpr(Monitor *mon, const QDict *qdict)
{
    g_autoptr(CprInfo) info = qmp_query_cpr(NULL);
    CprModeList *m;
    CprBlockerList *b;
    CprSnapshotInfo *s;
    strList *e;

    monitor_printf(mon, "modes:");
    for (m = info->modes; m; m = m->next) {
        monitor_printf(mon, " %s", CprMode_str(m->value));
    }
    monitor_printf(mon, "\nload pending: %s\n",
                   info->load_pending ? "yes" : "no");
    if (!info->blockers) {
        monitor_printf(mon, "blockers: none\n");
    }
    for (b = info->blockers; b; b = b->next) {
        monitor_printf(mon, "blocker (%s): %s: %s\n",
                       CprMode_str(b->value->mode), b->value->object,
                       b->value->reason);
    }
    if (!info->has_snapshot) {
        monitor_printf(mon, "snapshot: none\n");
        return;
    }
    s = info->snapshot;
    if (s->has_name) {
        monitor_printf(mon, "snapshot '%s' (savevm)\n", s->name);
    }
    monitor_printf(mon, "snapshot: %" PRIu64 " bytes of RAM, %" PRIu64
                   " bytes of device state, excluded:", s->ram_bytes,
                   s->device_bytes);
    for (e = s->excluded; e; e = e->next) {
        monitor_printf(mon, " %s", e->value);
    }
    monitor_printf(mon, "%s%s\nrestores: %" PRIu64 ", the last one %" PRIu64
                   " pages in %" PRIu64 " us (RAM %" PRIu64 " us, CPU %"
                   PRIu64 " us, devices %" PRIu64 " us)\n",
                   s->excluded || s->ignore_shared ? "" : " none",
                   s->ignore_shared ? " shared RAM" : "", s->restores,
                   s->last_restore_pages, s->last_restore_ns / 1000,
                   s->last_restore_ram_ns / 1000,
                   s->last_restore_cpu_ns / 1000,
                   s->last_restore_devices_ns / 1000);
}
