/*
 * QMP connections kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * When a QMP monitor's socket is kept across execve (see
 * chardev/char-socket-cpr.c), the client has already negotiated
 * capabilities with the old process.  The old process records, per
 * monitor, the negotiated capabilities and, for the monitor whose command
 * started the restart, the reply that command is waiting for.  The new
 * process then neither greets the client nor asks for capabilities
 * again; it sends that reply, so to the client cprsave simply returns.
 * With cprsave's auto-load, the reply waits until the new process has
 * loaded the state, and carries the error if that failed.
 */

#include "qemu/osdep.h"
#include "chardev/char-fe.h"
#include "qapi/error.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qjson.h"
#include "qapi/qmp/qstring.h"
#include "migration/cpr.h"
#include "monitor-internal.h"

static char *qmp_cpr_name(MonitorQMP *mon, const char *what)
{
    Chardev *chr = qemu_chr_fe_get_driver(&mon->common.chr);

    return chr ? g_strdup_printf("qmp:%s:%s", chr->label, what) : NULL;
}

/*
 * The reply to the request being dispatched on @mon, as the new process
 * will send it: cprsave returns {}, human-monitor-command "".
 */
static char *qmp_cpr_reply(MonitorQMP *mon)
{
    g_autoptr(QDict) rsp = qdict_new();
    g_autoptr(GString) json = NULL;
    const char *cmd;
    QObject *id;

    if (mon != qmp_dispatch_mon || !qmp_dispatch_req) {
        return NULL;
    }
    cmd = qdict_get_try_str(qmp_dispatch_req, "execute");
    if (!g_strcmp0(cmd, "human-monitor-command")) {
        qdict_put_str(rsp, "return", "");
    } else {
        qdict_put(rsp, "return", qdict_new());
    }
    id = qdict_get(qmp_dispatch_req, "id");
    if (id) {
        qdict_put_obj(rsp, "id", qobject_ref(id));
    }
    json = qobject_to_json(QOBJECT(rsp));
    return g_strdup(json->str);
}

/* The capabilities and the pending reply of every QMP monitor */
static void monitor_qmp_cpr_keep(bool keep)
{
    Monitor *m;

    QTAILQ_FOREACH(m, &mon_list, entry) {
        MonitorQMP *mon = container_of(m, MonitorQMP, common);
        g_autofree char *caps = NULL, *reply_name = NULL, *reply = NULL;
        bool keep_mon;

        if (!monitor_is_qmp(m) || !qemu_chr_fe_backend_open(&m->chr)) {
            continue;
        }
        caps = qmp_cpr_name(mon, "caps");
        reply_name = qmp_cpr_name(mon, "reply");
        if (!caps) {
            continue;
        }
        /* Only a monitor past capabilities negotiation stays so */
        keep_mon = keep && mon->commands == &qmp_commands;
        reply = keep_mon ? qmp_cpr_reply(mon) : NULL;
        cpr_keep_str(caps, mon->capab[QMP_CAPABILITY_OOB] ? "oob" : "",
                     keep_mon);
        cpr_keep_str(reply_name, reply, reply != NULL);
    }
}
CPR_KEEPER(monitor_qmp_cpr_keep)

/* cprsave's answer, held until the load it asked for with auto-load */
typedef struct QmpCprReply {
    MonitorQMP *mon;
    QDict *rsp;
} QmpCprReply;

static void qmp_cpr_send_reply(MonitorQMP *mon, QDict *rsp)
{
    qmp_send_response(mon, rsp);
    if (!cpr_is_recovery()) {
        cpr_mm_reply_sent();
    }
}

static void qmp_cpr_auto_loaded(void *opaque, Error *err)
{
    QmpCprReply *r = opaque;

    if (err) {
        QDict *e = qdict_new();
        g_autofree char *desc = g_strdup_printf(
            "the new QEMU could not load the state: %s; the VM is paused "
            "and waits for cprload", error_get_pretty(err));

        qdict_put_str(e, "class", "GenericError");
        qdict_put_str(e, "desc", desc);
        qdict_del(r->rsp, "return");
        qdict_put(r->rsp, "error", e);
    }
    qmp_cpr_send_reply(r->mon, r->rsp);
    qobject_unref(r->rsp);
    g_free(r);
}

bool monitor_qmp_cpr_resume(MonitorQMP *mon)
{
    g_autofree char *caps_name = qmp_cpr_name(mon, "caps");
    g_autofree char *reply_name = qmp_cpr_name(mon, "reply");
    g_autofree char *caps = NULL, *reply = NULL;
    QmpCprReply *r;
    QDict *rsp;

    if (!caps_name || !cpr_is_incoming()) {
        return false;
    }
    caps = cpr_take_str(caps_name);
    reply = cpr_take_str(reply_name);
    if (!caps) {
        return false;
    }
    mon->capab[QMP_CAPABILITY_OOB] = !strcmp(caps, "oob") &&
                                     mon->capab_offered[QMP_CAPABILITY_OOB];
    mon->commands = &qmp_commands;
    if (!reply || cpr_recovery_replied()) {
        return true;
    }
    rsp = qobject_to(QDict, qobject_from_json(reply, NULL));
    if (!rsp) {
        return true;
    }
    if (cpr_is_recovery()) {
        /* The restart failed: the old binary took the VM back. */
        QDict *err = qdict_new();

        qdict_put_str(err, "class", "GenericError");
        qdict_put_str(err, "desc", "the new QEMU did not come up; the "
                      "previous binary took the VM back and waits for "
                      "cprload");
        qdict_del(rsp, "return");
        qdict_put(rsp, "error", err);
    }
    r = g_new(QmpCprReply, 1);
    r->mon = mon;
    r->rsp = rsp;
    if (!cpr_auto_load_wait(qmp_cpr_auto_loaded, r)) {
        qmp_cpr_send_reply(mon, rsp);
        qobject_unref(rsp);
        g_free(r);
    }
    return true;
}
