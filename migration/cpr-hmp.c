/*
 * CPR: the human monitor commands
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
        qmp_cprsave(qdict_get_str(qdict, "file"), mode, !!binary, binary,
                    &err);
    }
    hmp_handle_error(mon, err);
}

void hmp_cprload(Monitor *mon, const QDict *qdict)
{
    Error *err = NULL;

    qmp_cprload(qdict_get_str(qdict, "file"), &err);
    hmp_handle_error(mon, err);
}

void hmp_info_cpr(Monitor *mon, const QDict *qdict)
{
    g_autoptr(CprInfo) info = qmp_query_cpr(NULL);
    CprModeList *m;
    CprBlockerList *b;

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
}
