/*
 * CPR snapshot behind savevm and loadvm (-machine cpr-snapshot=on)
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Fuzzers written against stock QEMU (syzkaller) take a snapshot with
 * HMP savevm and go back to it with loadvm before every input; stock
 * loadvm reads all of guest RAM and every device back from a disk image.
 * With the machine property cpr-snapshot=on, the same commands use the
 * in-memory CPR snapshot (cpr-snapshot.c): savevm takes it, loadvm puts
 * back only the pages written since, delvm drops it, info snapshots shows
 * it.  The migration capability x-ignore-shared leaves shared RAM out of
 * it, as it leaves it out of savevm's image; the machine property
 * cpr-snapshot-exclude names more memory backends and devices that
 * loadvm leaves as they are (cpr-exclude.c).
 *
 * There is one snapshot: savevm under its name replaces it, under
 * another name is refused until delvm.  Disks that devices can write go
 * under overlays that each loadvm empties (cpr-snapshot-disks.c).
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qapi/error.h"
#include "qapi/qapi-builtin-visit.h"
#include "qapi/qapi-commands-cpr.h"
#include "block/qapi.h"
#include "block/snapshot.h"
#include "hw/boards.h"
#include "migration/cpr.h"
#include "migration/misc.h"
#include "monitor/monitor.h"
#include "migration/migration.h"
#include "cpr-internal.h"

bool cpr_savevm_enabled(void)
{
    return current_machine && current_machine->cpr_snapshot;
}

/* The ids of -machine cpr-snapshot-exclude, separated by ':' */
static strList *cpr_savevm_exclude(void)
{
    g_auto(GStrv) ids = NULL;
    strList *list = NULL;
    int i;

    if (!current_machine->cpr_snapshot_exclude) {
        return NULL;
    }
    ids = g_strsplit(current_machine->cpr_snapshot_exclude, ":", -1);
    for (i = g_strv_length(ids) - 1; i >= 0; i--) {
        if (*ids[i]) {
            QAPI_LIST_PREPEND(list, g_strdup(ids[i]));
        }
    }
    return list;
}

bool cpr_savevm_save(const char *name, bool overwrite, Error **errp)
{
    ERRP_GUARD();
    g_autoptr(strList) exclude = cpr_savevm_exclude();
    g_autofree char *autoname = NULL;
    const char *there = cpr_snapshot_name();

    if (!name) {
        g_autoptr(GDateTime) now = g_date_time_new_now_local();

        autoname = g_date_time_format(now, "vm-%Y%m%d%H%M%S");
        name = autoname;
    }
    if (cpr_snapshot_exists()) {
        if (!there) {
            error_setg(errp, "a snapshot taken by cpr-snapshot exists, and "
                       "cpr-snapshot=on keeps one");
            error_append_hint(errp, "Drop it with cpr-snapshot-drop "
                              "first.\n");
            return false;
        }
        if (strcmp(there, name)) {
            error_setg(errp, "the in-memory snapshot '%s' exists, and "
                       "cpr-snapshot=on keeps one", there);
            error_append_hint(errp, "Delete it with delvm first.\n");
            return false;
        }
        if (!overwrite) {
            error_setg(errp, "Snapshot '%s' already exists in memory", name);
            return false;
        }
    }
    return cpr_snapshot_take(name, exclude, migrate_ignore_shared(), true,
                             errp);
}

/* The snapshot is the one named @name */
static bool cpr_savevm_is(const char *name)
{
    const char *there = cpr_snapshot_name();

    return there && name && !strcmp(there, name);
}

bool cpr_savevm_load(const char *name, Error **errp)
{
    if (!cpr_savevm_is(name)) {
        error_setg(errp, "there is no snapshot '%s' in memory "
                   "(-machine cpr-snapshot=on)", name ?: "");
        return false;
    }
    return cpr_snapshot_restore(false, false, errp);
}

bool cpr_savevm_delete(const char *name, Error **errp)
{
    /* As with disk images, deleting what is not there is no error */
    if (cpr_savevm_is(name)) {
        cpr_snapshot_drop();
    }
    return true;
}

void cpr_savevm_info(Monitor *mon)
{
    g_autoptr(CprSnapshotInfo) info = cpr_snapshot_info();
    QEMUSnapshotInfo sn = { .icount = -1ULL };

    if (!info || !info->name) {
        monitor_printf(mon, "There is no snapshot available.\n");
        return;
    }
    pstrcpy(sn.id_str, sizeof(sn.id_str), "1");
    pstrcpy(sn.name, sizeof(sn.name), info->name);
    sn.vm_state_size = info->ram_bytes + info->device_bytes;
    sn.date_sec = info->date_sec;
    sn.date_nsec = info->date_nsec;
    sn.vm_clock_nsec = info->vm_clock_sec * NANOSECONDS_PER_SECOND +
                       info->vm_clock_nsec;
    monitor_printf(mon, "List of snapshots present in memory "
                   "(cpr-snapshot=on):\n");
    bdrv_snapshot_dump(NULL);
    monitor_printf(mon, "\n");
    bdrv_snapshot_dump(&sn);
    monitor_printf(mon, "\n");
}
