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
 *
 * The old process stops reading its QMP connections before it hands them
 * over, so that a request sent behind cprsave stays in the socket for the
 * new process.  What it had read and not answered yet (the requests
 * queued behind the one being dispatched, and the bytes of one still
 * being read) goes to the new process as text, which it reads before the
 * socket; in restart mode, so does the output not sent yet.
 */

#include "qemu/osdep.h"
#include "chardev/char-fe.h"
#include "qapi/error.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qjson.h"
#include "qapi/qmp/qstring.h"
#include "qemu/lockable.h"
#include "qemu/thread.h"
#include "block/aio-wait.h"
#include "sysemu/iothread.h"
#include "migration/cpr.h"
#include "monitor-internal.h"
#include "trace.h"

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

typedef struct QmpCprCarried {
    bool oob;                   /* the capability the client negotiated */
    char *reply;                /* cprsave's answer (JSON), or NULL */
    char *input;                /* read, not answered yet */
    char *output;               /* not sent yet */
} QmpCprCarried;

static bool qmp_cpr_relayed(MonitorQMP *mon, QmpCprCarried *c);
static void qmp_cpr_stop_reading(void);
static void qmp_cpr_resume_quiet(void);

/* The QMP monitors this process stopped reading for cprsave */
static GSList *qmp_cpr_quiet;   /* MonitorQMP * */
/* A transfer is under way: the monitors' output is still sent from here */
static bool qmp_cpr_transfer;

/*
 * Restart mode: output the monitors had not sent, taken out of their
 * buffers (the monitor I/O thread would send it between here and
 * execve, and the new process again), put back if execve fails
 */
typedef struct QmpCprOutput {
    MonitorQMP *mon;
    char *text;
} QmpCprOutput;

static GSList *qmp_cpr_outputs;         /* QmpCprOutput * */

static void qmp_cpr_output_put_back(void)
{
    GSList *l;

    for (l = qmp_cpr_outputs; l; l = l->next) {
        QmpCprOutput *o = l->data;

        WITH_QEMU_LOCK_GUARD(&o->mon->common.mon_lock) {
            g_string_prepend(o->mon->common.outbuf, o->text);
        }
        monitor_flush(&o->mon->common);
        g_free(o->text);
        g_free(o);
    }
    g_clear_pointer(&qmp_cpr_outputs, g_slist_free);
}

/* What @mon read and did not answer, and did not send yet */
static void qmp_cpr_pending(MonitorQMP *mon, QmpCprCarried *c)
{
    g_autoptr(GString) in = monitor_qmp_cpr_unread(mon);
    QmpCprOutput *o;

    if (in->len) {
        c->input = g_strndup(in->str, in->len);
    }
    /* Restart mode runs the keepers once, just before execve */
    if (qmp_cpr_transfer) {
        return;
    }
    WITH_QEMU_LOCK_GUARD(&mon->common.mon_lock) {
        if (mon->common.outbuf->len) {
            c->output = g_strndup(mon->common.outbuf->str,
                                  mon->common.outbuf->len);
            g_string_truncate(mon->common.outbuf, 0);
        }
    }
    if (c->output) {
        o = g_new0(QmpCprOutput, 1);
        o->mon = mon;
        o->text = g_strdup(c->output);
        qmp_cpr_outputs = g_slist_prepend(qmp_cpr_outputs, o);
    }
}

/* The capabilities and the pending reply of every QMP monitor */
static void monitor_qmp_cpr_keep(bool keep)
{
    Monitor *m;

    if (!keep) {
        qmp_cpr_output_put_back();
        qmp_cpr_resume_quiet();
    } else if (!qmp_cpr_quiet) {
        qmp_cpr_stop_reading();
    }
    QTAILQ_FOREACH(m, &mon_list, entry) {
        MonitorQMP *mon = container_of(m, MonitorQMP, common);
        g_autofree char *caps = NULL, *reply_name = NULL;
        g_autofree char *input_name = NULL, *output_name = NULL;
        QmpCprCarried c = { 0 };
        bool keep_mon;

        if (!monitor_is_qmp(m) || !qemu_chr_fe_backend_open(&m->chr)) {
            continue;
        }
        caps = qmp_cpr_name(mon, "caps");
        reply_name = qmp_cpr_name(mon, "reply");
        input_name = qmp_cpr_name(mon, "input");
        output_name = qmp_cpr_name(mon, "output");
        if (!caps) {
            continue;
        }
        /* Only a monitor past capabilities negotiation stays so */
        keep_mon = keep && mon->commands == &qmp_commands;
        /* A relay passes on what it took over and never attached */
        if (keep_mon && !qmp_cpr_relayed(mon, &c)) {
            c.oob = mon->capab[QMP_CAPABILITY_OOB];
            c.reply = qmp_cpr_reply(mon);
            qmp_cpr_pending(mon, &c);
        }
        cpr_keep_str(caps, c.oob ? "oob" : "", keep_mon);
        cpr_keep_str(reply_name, c.reply, c.reply != NULL);
        cpr_keep_str(input_name, c.input, c.input != NULL);
        cpr_keep_str(output_name, c.output, c.output != NULL);
        if (c.input || c.output) {
            trace_qmp_cpr_carry(input_name, c.input ? strlen(c.input) : 0,
                                c.output ? strlen(c.output) : 0);
        }
        g_free(c.reply);
        g_free(c.input);
        g_free(c.output);
    }
}
CPR_KEEPER(monitor_qmp_cpr_keep)

/*
 * What the new process took over for one kept QMP monitor, claimed in the
 * main thread when the monitor is created and used when its connection
 * is attached (CHR_EVENT_OPENED, in the monitor I/O thread).  With
 * auto-load, cprsave's answer is sent by whichever of the two comes
 * second: the attachment, or the end of the load (main thread).
 */
typedef struct QmpCprKept {
    MonitorQMP *mon;
    bool oob;                   /* the capability the client negotiated */
    QDict *reply;               /* cprsave's answer, or NULL */
    char *input;                /* read by the old process, not answered */
    char *output;               /* not sent by the old process */
    bool held;                  /* the answer waits for auto-load */
    bool opened;                /* the kept connection is attached */
} QmpCprKept;

static QemuMutex qmp_cpr_lock;
static GSList *qmp_cpr_kept;    /* QmpCprKept * */

static void __attribute__((constructor)) qmp_cpr_init(void)
{
    qemu_mutex_init(&qmp_cpr_lock);
}

static void qmp_cpr_kept_free(QmpCprKept *k)
{
    qobject_unref(k->reply);
    g_free(k->input);
    g_free(k->output);
    g_free(k);
}

static void qmp_cpr_send_reply(MonitorQMP *mon, QDict *rsp)
{
    qmp_send_response(mon, rsp);
    if (!cpr_is_recovery()) {
        cpr_mm_reply_sent();
    }
}

/* Make @rsp the error reply "@fmt" */
static void G_GNUC_PRINTF(2, 3) qmp_cpr_reply_error(QDict *rsp,
                                                   const char *fmt, ...)
{
    QDict *e = qdict_new();
    g_autofree char *desc = NULL;
    va_list ap;

    va_start(ap, fmt);
    desc = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    qdict_put_str(e, "class", "GenericError");
    qdict_put_str(e, "desc", desc);
    qdict_del(rsp, "return");
    qdict_put(rsp, "error", e);
}

/* cprsave's auto-load ended (main thread) */
static void qmp_cpr_auto_loaded(void *opaque, Error *err)
{
    QmpCprKept *k = opaque;
    bool send;

    if (err) {
        qmp_cpr_reply_error(k->reply, "the new QEMU could not load the "
                            "state: %s; the VM is paused and waits for "
                            "cprload", error_get_pretty(err));
    }
    WITH_QEMU_LOCK_GUARD(&qmp_cpr_lock) {
        k->held = false;
        send = k->opened;
        if (send) {
            qmp_cpr_kept = g_slist_remove(qmp_cpr_kept, k);
        }
    }
    if (send) {
        qmp_cpr_send_reply(k->mon, k->reply);
        qmp_cpr_kept_free(k);
    }
}

void monitor_qmp_cpr_claim(MonitorQMP *mon)
{
    g_autofree char *caps_name = qmp_cpr_name(mon, "caps");
    g_autofree char *reply_name = qmp_cpr_name(mon, "reply");
    g_autofree char *input_name = qmp_cpr_name(mon, "input");
    g_autofree char *output_name = qmp_cpr_name(mon, "output");
    g_autofree char *caps = NULL, *reply = NULL;
    QmpCprKept *k;

    if (!caps_name || !cpr_is_incoming()) {
        return;
    }
    caps = cpr_take_str(caps_name);
    reply = cpr_take_str(reply_name);
    if (!caps) {
        return;
    }
    k = g_new0(QmpCprKept, 1);
    k->mon = mon;
    k->input = cpr_take_str(input_name);
    k->output = cpr_take_str(output_name);
    if (cpr_recovery_replied()) {
        /* The new process that died had answered them and sent it */
        g_clear_pointer(&k->input, g_free);
        g_clear_pointer(&k->output, g_free);
    }
    k->oob = !strcmp(caps, "oob");
    if (reply && !cpr_recovery_replied()) {
        k->reply = qobject_to(QDict, qobject_from_json(reply, NULL));
    }
    if (k->reply && cpr_relay_error()) {
        qmp_cpr_reply_error(k->reply, "%s", cpr_relay_error());
    } else if (k->reply && cpr_is_recovery()) {
        /* The restart failed: the old binary took the VM back. */
        qmp_cpr_reply_error(k->reply, "the new QEMU did not come up; the "
                            "previous binary took the VM back and waits "
                            "for cprload");
    }
    /* Before the connection is attached and before any load: no race */
    k->held = k->reply && cpr_auto_load_wait(qmp_cpr_auto_loaded, k);
    WITH_QEMU_LOCK_GUARD(&qmp_cpr_lock) {
        qmp_cpr_kept = g_slist_append(qmp_cpr_kept, k);
    }
}

/*
 * A relay of cprsave restart: the client's capabilities and cprsave's
 * reply as the relay took them over for @mon, if it did
 */
static bool qmp_cpr_relayed(MonitorQMP *mon, QmpCprCarried *c)
{
    GSList *l;

    QEMU_LOCK_GUARD(&qmp_cpr_lock);
    for (l = qmp_cpr_kept; l; l = l->next) {
        QmpCprKept *k = l->data;

        if (k->mon == mon && !k->opened) {
            g_autoptr(GString) json = k->reply ?
                qobject_to_json(QOBJECT(k->reply)) : NULL;

            c->oob = k->oob;
            c->reply = json ? g_string_free(g_steal_pointer(&json), false) :
                       NULL;
            c->input = g_strdup(k->input);
            c->output = g_strdup(k->output);
            return true;
        }
    }
    return false;
}

bool monitor_qmp_cpr_kept(MonitorQMP *mon)
{
    GSList *l;

    QEMU_LOCK_GUARD(&qmp_cpr_lock);
    for (l = qmp_cpr_kept; l; l = l->next) {
        QmpCprKept *e = l->data;

        if (e->mon == mon && !e->opened) {
            return true;
        }
    }
    return false;
}

bool monitor_qmp_cpr_resume(MonitorQMP *mon)
{
    QmpCprKept *k = NULL;
    QDict *reply = NULL;
    g_autofree char *input = NULL, *output = NULL;
    const char *p;
    bool oob;
    GSList *l;

    WITH_QEMU_LOCK_GUARD(&qmp_cpr_lock) {
        for (l = qmp_cpr_kept; l; l = l->next) {
            QmpCprKept *e = l->data;

            /* Only the kept connection: a later one is greeted anew */
            if (e->mon == mon && !e->opened) {
                k = e;
                break;
            }
        }
        if (!k) {
            return false;
        }
        k->opened = true;
        oob = k->oob;
        input = g_steal_pointer(&k->input);
        output = g_steal_pointer(&k->output);
        if (k->held) {
            k = NULL;           /* qmp_cpr_auto_loaded() sends and frees */
        } else {
            qmp_cpr_kept = g_slist_remove(qmp_cpr_kept, k);
            reply = g_steal_pointer(&k->reply);
        }
    }
    mon->capab[QMP_CAPABILITY_OOB] = oob &&
                                     mon->capab_offered[QMP_CAPABILITY_OOB];
    mon->commands = &qmp_commands;
    if (k) {
        qmp_cpr_kept_free(k);
    }
    if (output) {
        /* As it was: monitor_puts() would add a '\r' before each '\n' */
        WITH_QEMU_LOCK_GUARD(&mon->common.mon_lock) {
            g_string_append(mon->common.outbuf, output);
        }
        monitor_flush(&mon->common);
    }
    if (reply) {
        qmp_cpr_send_reply(mon, reply);
        qobject_unref(reply);
    }
    /* As if read from the socket, a byte at a time (monitor_qmp_read()) */
    for (p = input; p && *p; p++) {
        g_string_append_c(mon->cpr_unparsed, *p);
        json_message_parser_feed(&mon->parser, p, 1);
    }
    return true;
}

static void qmp_cpr_resume_quiet(void)
{
    GSList *l;

    for (l = qmp_cpr_quiet; l; l = l->next) {
        monitor_resume(&((MonitorQMP *)l->data)->common);
    }
    g_clear_pointer(&qmp_cpr_quiet, g_slist_free);
}

static void qmp_cpr_nothing(void *opaque)
{
}

/* Stop reading every open QMP connection, in the monitor I/O thread too */
static void qmp_cpr_stop_reading(void)
{
    AioContext *ctx = mon_iothread ? iothread_get_aio_context(mon_iothread)
                                   : NULL;
    Monitor *m;

    QTAILQ_FOREACH(m, &mon_list, entry) {
        if (monitor_is_qmp(m) && qemu_chr_fe_backend_open(&m->chr)) {
            monitor_suspend(m);
            qmp_cpr_quiet = g_slist_prepend(qmp_cpr_quiet,
                                            container_of(m, MonitorQMP,
                                                         common));
        }
    }
    if (ctx) {
        /*
         * After any read the monitor I/O thread was doing: twice, since a
         * chardev's read in the same pass of its loop as the first would
         * still take the byte it was told it could (before the suspend)
         */
        aio_context_acquire(ctx);
        aio_wait_bh_oneshot(ctx, qmp_cpr_nothing, NULL);
        aio_wait_bh_oneshot(ctx, qmp_cpr_nothing, NULL);
        aio_context_release(ctx);
    }
}

/*
 * Called once request @req (NULL if it was no JSON object) is dispatched,
 * before its answer @rsp is sent.  A hot-plug command that succeeded goes
 * into the journal the new process replays (migration/cpr-hotplug.c).
 * After quit in a process that hands the VM back when it ends, the
 * connections belong to the process taking the VM back: a request sent
 * behind quit, or as soon as quit is answered, stays in the socket for
 * it, whole (read in part here, the rest would make no sense there).
 */
void monitor_qmp_cpr_dispatched(QDict *req, QDict *rsp)
{
    if (req && qdict_haskey(rsp, "return")) {
        cpr_hotplug_note(qdict_get_try_str(req, "execute"),
                         qdict_get_qdict(req, "arguments"));
    }
    if (cpr_mm_handing_back() && !qmp_cpr_quiet) {
        qmp_cpr_stop_reading();
    }
}

/*
 * A relay could not hand the VM back and runs it on: its monitors read
 * their connections now, and cprsave's pending answer says what happened
 */
static void qmp_cpr_relay_kept(void)
{
    GSList *l;

    WITH_QEMU_LOCK_GUARD(&qmp_cpr_lock) {
        for (l = qmp_cpr_kept; l; l = l->next) {
            QmpCprKept *k = l->data;

            if (!k->opened && k->reply) {
                qmp_cpr_reply_error(k->reply, "%s", cpr_relay_error());
            }
        }
    }
    monitor_qmp_attach_relayed();
}

static int qmp_cpr_notify(NotifierWithReturn *n, void *data)
{
    CprNotifyData *d = data;

    switch (d->event) {
    case CPR_EVENT_TRANSFER:
        qmp_cpr_transfer = true;
        qmp_cpr_stop_reading();
        break;
    case CPR_EVENT_TRANSFER_FAILED:
        qmp_cpr_transfer = false;
        qmp_cpr_resume_quiet();
        break;
    case CPR_EVENT_RELAY_KEPT:
        qmp_cpr_relay_kept();
        break;
    default:
        break;
    }
    return 0;
}

static NotifierWithReturn qmp_cpr_notifier = { .notify = qmp_cpr_notify };

static void __attribute__((constructor)) qmp_cpr_notifier_init(void)
{
    cpr_add_notifier(&qmp_cpr_notifier);
}
