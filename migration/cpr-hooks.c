/*
 * CPR: what other subsystems register with CPR
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Subsystems never get called by name from the CPR commands.  They
 * register here instead: keepers, which keep their descriptors across
 * execve; notifiers, which answer the mode events (CprEvent); blocker
 * functions, which report what blocks a mode; and migration blockers
 * that do not block restart mode because the device handles live update
 * itself.  The commands (cpr.c) and the modes (cpr-<mode>.c) ask here.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "migration/cpr.h"
#include "migration/migration.h"
#include "migration/misc.h"
#include "migration/savevm.h"
#include "cpr-internal.h"

static NotifierWithReturnList cpr_notifiers =
    NOTIFIER_WITH_RETURN_LIST_INITIALIZER(cpr_notifiers);
static GSList *cpr_keepers;              /* CprKeepFn * */
static GSList *cpr_blocker_fns;          /* CprBlockerFn * */
static GSList *cpr_allowed_blockers;     /* Error * */
static bool cpr_saving;

void cpr_add_keeper(CprKeepFn *fn)
{
    cpr_keepers = g_slist_append(cpr_keepers, fn);
}

void cpr_add_notifier(NotifierWithReturn *n)
{
    notifier_with_return_list_add(&cpr_notifiers, n);
}

void cpr_remove_notifier(NotifierWithReturn *n)
{
    notifier_with_return_remove(n);
}

void cpr_run_keepers(bool keep)
{
    GSList *k;

    for (k = cpr_keepers; k; k = k->next) {
        ((CprKeepFn *)k->data)(keep);
    }
}

bool cpr_notify(CprEvent event, Error **errp)
{
    CprNotifyData data = { .event = event, .errp = errp };

    if (event == CPR_EVENT_EXEC || event == CPR_EVENT_EXEC_FAILED) {
        cpr_run_keepers(event == CPR_EVENT_EXEC);
    }
    return notifier_with_return_list_notify(&cpr_notifiers, &data) == 0;
}

void cpr_set_saving(bool saving)
{
    cpr_saving = saving;
}

bool cpr_save_in_progress(void)
{
    return cpr_saving;
}

void cpr_add_blocker(CprBlockerList ***tail, CprMode mode, const char *object,
                     const char *fmt, ...)
{
    CprBlocker *b = g_new0(CprBlocker, 1);
    va_list ap;

    va_start(ap, fmt);
    b->mode = mode;
    b->object = g_strdup(object);
    b->reason = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    QAPI_LIST_APPEND(*tail, b);
}

void cpr_add_blocker_fn(CprBlockerFn *fn)
{
    cpr_blocker_fns = g_slist_append(cpr_blocker_fns, fn);
}

void cpr_allow_migration_blocker(Error *reason)
{
    cpr_allowed_blockers = g_slist_prepend(cpr_allowed_blockers, reason);
}

void cpr_disallow_migration_blocker(Error *reason)
{
    cpr_allowed_blockers = g_slist_remove(cpr_allowed_blockers, reason);
}

/*
 * Migration blockers block every mode, but for those of devices that
 * handle CPR themselves and report their own blockers for each mode
 */
static void cpr_add_migration_blocker(Error *err, void *opaque)
{
    CprMode m;

    if (g_slist_find(cpr_allowed_blockers, err)) {
        return;
    }
    for (m = 0; m < CPR_MODE__MAX; m++) {
        cpr_add_blocker(opaque, m, "migration", "%s", error_get_pretty(err));
    }
}

static void cpr_add_unmigratable(const char *idstr, void *opaque)
{
    CprMode m;

    for (m = 0; m < CPR_MODE__MAX; m++) {
        cpr_add_blocker(opaque, m, idstr, "device state cannot be saved");
    }
}

void cpr_hooks_add_blockers(CprBlockerList ***tail)
{
    GSList *fns;

    qemu_savevm_foreach_unmigratable(cpr_add_unmigratable, tail);
    migration_foreach_blocker(cpr_add_migration_blocker, tail);
    for (fns = cpr_blocker_fns; fns; fns = fns->next) {
        ((CprBlockerFn *)fns->data)(tail);
    }
}
