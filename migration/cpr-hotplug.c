/*
 * CPR: devices plugged and unplugged since start-up, recreated by the
 * process that takes the VM over
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The process taking a VM over (after cprsave restart, a transfer, a
 * relay) is started with the old one's command line.  What the VM got or
 * lost since start-up is kept in a journal: the QMP commands device_add,
 * netdev_add, blockdev-add, object-add and chardev-add that succeeded,
 * the matching removals (netdev_del, blockdev-del, object-del,
 * chardev-remove), and the removal of a device, noted when the device
 * leaves the machine (device_del only asks the guest).  The journal travels
 * in the CPR state as a JSON array.  The new process runs it between
 * creating the command line's devices and finishing the machine, as if
 * it were part of its command line: the guest sees no hot-plug event,
 * and every device's state is loaded afterwards.  An addition whose
 * object the command line has already, or a removal whose object it does
 * not have, is passed over: a new process of transfer mode may be given
 * the VM's present configuration.  The new process keeps the journal for
 * the next update.
 *
 * The journal holds what differs from the command line and no more: the
 * removal of something the journal added takes the addition out and is
 * not noted.  A device is known by its QOM path, the rest by kind and id
 * (a block node by its node name).
 *
 * The process also knows which devices it can account for: those it had
 * once its machine was created, and those QMP device_add added with an
 * id since.  Any other device (added without an id, or over HMP) would
 * be missing in the new process: it blocks cprsave while it exists.
 * Backends added over HMP are not seen; docs/cpr.rst says so.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-block-core.h"
#include "qapi/qapi-commands-char.h"
#include "qapi/qapi-commands-net.h"
#include "qapi/qapi-commands-qom.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qjson.h"
#include "qapi/qmp/qlist.h"
#include "qapi/qmp/qstring.h"
#include "block/block.h"
#include "chardev/char.h"
#include "hw/qdev-core.h"
#include "monitor/qdev.h"
#include "net/net.h"
#include "qom/object_interfaces.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_HOTPLUG_NAME "cpr-hotplug"
/* The journal's note of a device that is gone */
#define CPR_HOTPLUG_DEVICE_GONE "x-cpr-device-gone"
#define CPR_HOTPLUG_PERIPHERAL "/machine/peripheral"
#define CPR_HOTPLUG_PERIPHERAL_ANON "/machine/peripheral-anon"

typedef void CprHotplugFn(QDict *args, QObject **ret, Error **errp);
/* Whether the object named @name exists in this process */
typedef bool CprHotplugExistsFn(const char *name);

typedef struct CprHotplugCmd {
    const char *name;           /* the QMP command */
    const char *kind;           /* what it adds or removes */
    const char *key;            /* the argument that names it */
    bool removes;
    CprHotplugFn *fn;
    CprHotplugExistsFn *exists;
} CprHotplugCmd;

static void cpr_hotplug_remove_device(QDict *args, QObject **ret,
                                      Error **errp);

static bool cpr_hotplug_device_exists(const char *path)
{
    return object_resolve_path_type(path, TYPE_DEVICE, NULL);
}

static bool cpr_hotplug_netdev_exists(const char *id)
{
    return qemu_find_netdev(id);
}

static bool cpr_hotplug_node_exists(const char *node_name)
{
    return bdrv_find_node(node_name);
}

static bool cpr_hotplug_object_exists(const char *id)
{
    return object_resolve_path_component(object_get_objects_root(), id);
}

static bool cpr_hotplug_chardev_exists(const char *id)
{
    return qemu_chr_find(id);
}

static const CprHotplugCmd cpr_hotplug_cmds[] = {
    { "device_add", "device", "id", false, qmp_device_add,
      cpr_hotplug_device_exists },
    { CPR_HOTPLUG_DEVICE_GONE, "device", "path", true,
      cpr_hotplug_remove_device, cpr_hotplug_device_exists },
    { "netdev_add", "netdev", "id", false, qmp_marshal_netdev_add,
      cpr_hotplug_netdev_exists },
    { "netdev_del", "netdev", "id", true, qmp_marshal_netdev_del,
      cpr_hotplug_netdev_exists },
    { "blockdev-add", "blockdev", "node-name", false,
      qmp_marshal_blockdev_add, cpr_hotplug_node_exists },
    { "blockdev-del", "blockdev", "node-name", true,
      qmp_marshal_blockdev_del, cpr_hotplug_node_exists },
    { "object-add", "object", "id", false, qmp_marshal_object_add,
      cpr_hotplug_object_exists },
    { "object-del", "object", "id", true, qmp_marshal_object_del,
      cpr_hotplug_object_exists },
    { "chardev-add", "chardev", "id", false, qmp_marshal_chardev_add,
      cpr_hotplug_chardev_exists },
    { "chardev-remove", "chardev", "id", true, qmp_marshal_chardev_remove,
      cpr_hotplug_chardev_exists },
};

/* The journal: a list of {"execute": NAME, "arguments": {...}} */
static QList *cpr_hotplug_journal;
/* The paths of the devices this process accounts for */
static GHashTable *cpr_hotplug_known;
/* The journal is being replayed: what it does is noted already */
static bool cpr_hotplug_replaying;

static const CprHotplugCmd *cpr_hotplug_cmd(const char *name)
{
    int i;

    for (i = 0; name && i < ARRAY_SIZE(cpr_hotplug_cmds); i++) {
        if (!strcmp(cpr_hotplug_cmds[i].name, name)) {
            return &cpr_hotplug_cmds[i];
        }
    }
    return NULL;
}

/* What @entry adds or removes, as "KIND:KEY"; NULL if it names nothing */
static char *cpr_hotplug_key(const CprHotplugCmd *cmd, QDict *args)
{
    const char *key = args ? qdict_get_try_str(args, cmd->key) : NULL;

    if (!key) {
        return NULL;
    }
    if (!strcmp(cmd->name, "device_add")) {
        return g_strdup_printf("device:" CPR_HOTPLUG_PERIPHERAL "/%s", key);
    }
    return g_strdup_printf("%s:%s", cmd->kind, key);
}

static const CprHotplugCmd *cpr_hotplug_entry(QObject *obj, QDict **args)
{
    QDict *entry = qobject_to(QDict, obj);

    *args = entry ? qdict_get_qdict(entry, "arguments") : NULL;
    return entry ? cpr_hotplug_cmd(qdict_get_try_str(entry, "execute"))
                 : NULL;
}

/*
 * Take out the addition that @key names, if the journal has it; true if
 * it did (the removal then needs no note)
 */
static bool cpr_hotplug_cancel(const char *key)
{
    QListEntry *e;

    QLIST_FOREACH_ENTRY(cpr_hotplug_journal, e) {
        QDict *args;
        const CprHotplugCmd *cmd = cpr_hotplug_entry(e->value, &args);
        g_autofree char *k = cmd && !cmd->removes ?
                             cpr_hotplug_key(cmd, args) : NULL;

        if (k && !strcmp(k, key)) {
            QTAILQ_REMOVE(&cpr_hotplug_journal->head, e, next);
            qobject_unref(e->value);
            g_free(e);
            return true;
        }
    }
    return false;
}

static void cpr_hotplug_append(const char *name, QDict *args)
{
    QDict *entry = qdict_new();

    if (!cpr_hotplug_journal) {
        cpr_hotplug_journal = qlist_new();
    }
    qdict_put_str(entry, "execute", name);
    qdict_put(entry, "arguments", qdict_clone_shallow(args));
    qlist_append(cpr_hotplug_journal, entry);
}

static void cpr_hotplug_record(const CprHotplugCmd *cmd, QDict *args)
{
    g_autofree char *key = cpr_hotplug_key(cmd, args);

    if (cpr_hotplug_replaying || !key) {
        return;                 /* no id: a blocker while it exists */
    }
    trace_cpr_hotplug_note(cmd->name, key);
    if (!strcmp(cmd->name, "device_add") && cpr_hotplug_known) {
        g_hash_table_add(cpr_hotplug_known,
                         g_strdup(key + strlen("device:")));
    }
    if (cmd->removes && cpr_hotplug_journal &&
        cpr_hotplug_cancel(key)) {
        return;
    }
    cpr_hotplug_append(cmd->name, args);
}

void cpr_hotplug_note(const char *name, QDict *args)
{
    const CprHotplugCmd *cmd = cpr_hotplug_cmd(name);

    /* A device's removal is noted when the device is gone */
    if (cmd && strcmp(name, CPR_HOTPLUG_DEVICE_GONE)) {
        cpr_hotplug_record(cmd, args);
    }
}

void cpr_hotplug_device_gone(const char *path)
{
    g_autoptr(QDict) args = NULL;

    /* Only a device the journal can account for, and not its parts */
    if (!cpr_hotplug_known || !g_hash_table_remove(cpr_hotplug_known, path)) {
        return;
    }
    args = qdict_new();
    qdict_put_str(args, "path", path);
    cpr_hotplug_record(cpr_hotplug_cmd(CPR_HOTPLUG_DEVICE_GONE), args);
}

/* Replay: a device of the command line that the VM no longer has */
static void cpr_hotplug_remove_device(QDict *args, QObject **ret,
                                      Error **errp)
{
    const char *path = qdict_get_try_str(args, "path");
    Object *obj = path ? object_resolve_path_type(path, TYPE_DEVICE, NULL)
                       : NULL;

    if (!obj) {
        error_setg(errp, "no device '%s'", path ?: "");
        return;
    }
    object_unparent(obj);
}

typedef void CprHotplugDevFn(const char *path, void *opaque);

typedef struct CprHotplugDevs {
    CprHotplugDevFn *fn;
    void *opaque;
} CprHotplugDevs;

static int cpr_hotplug_dev_child(Object *child, void *opaque)
{
    CprHotplugDevs *d = opaque;
    g_autofree char *path = object_get_canonical_path(child);

    d->fn(path, d->opaque);
    return 0;
}

/* Call @fn with the path of each device a user plugged */
static void cpr_hotplug_foreach_device(CprHotplugDevFn *fn, void *opaque)
{
    static const char *const containers[] = {
        CPR_HOTPLUG_PERIPHERAL, CPR_HOTPLUG_PERIPHERAL_ANON,
    };
    CprHotplugDevs d = { .fn = fn, .opaque = opaque };
    int i;

    for (i = 0; i < ARRAY_SIZE(containers); i++) {
        Object *c = object_resolve_path(containers[i], NULL);

        if (c) {
            object_child_foreach(c, cpr_hotplug_dev_child, &d);
        }
    }
}

static void cpr_hotplug_know(const char *path, void *opaque)
{
    g_hash_table_add(cpr_hotplug_known, g_strdup(path));
}

static bool cpr_hotplug_take_journal(Error **errp)
{
    ERRP_GUARD();
    g_autofree char *json = cpr_take_str(CPR_HOTPLUG_NAME);
    QListEntry *e;

    if (!json) {
        return true;
    }
    cpr_hotplug_journal = qobject_to(QList, qobject_from_json(json, NULL));
    if (!cpr_hotplug_journal) {
        error_setg(errp, "the CPR state's journal of hot-plugged devices "
                   "is not a JSON array");
        return false;
    }
    cpr_hotplug_replaying = true;
    QLIST_FOREACH_ENTRY(cpr_hotplug_journal, e) {
        QDict *args;
        const CprHotplugCmd *cmd = cpr_hotplug_entry(e->value, &args);
        QObject *ret = NULL;

        g_autofree char *key = cmd ? cpr_hotplug_key(cmd, args) : NULL;

        if (!key) {
            error_setg(errp, "the journal of hot-plugged devices has an "
                       "entry this QEMU does not know");
            break;
        }
        /* The command line has this change already */
        if (cmd->exists(strchr(key, ':') + 1) != cmd->removes) {
            trace_cpr_hotplug_replay(cmd->name, key, "passed over");
            continue;
        }
        trace_cpr_hotplug_replay(cmd->name, key, "");
        cmd->fn(args, &ret, errp);
        qobject_unref(ret);
        if (*errp) {
            g_autoptr(GString) s = qobject_to_json(QOBJECT(args));

            error_prepend(errp, "cannot repeat %s %s of the old process: ",
                          cmd->name, s->str);
            break;
        }
    }
    cpr_hotplug_replaying = false;
    return !*errp;
}

bool cpr_hotplug_replay(Error **errp)
{
    if (!cpr_hotplug_take_journal(errp)) {
        return false;
    }
    cpr_hotplug_known = g_hash_table_new_full(g_str_hash, g_str_equal,
                                              g_free, NULL);
    cpr_hotplug_foreach_device(cpr_hotplug_know, NULL);
    return true;
}

static void cpr_hotplug_keep(bool keep)
{
    g_autoptr(GString) json = NULL;

    if (keep && cpr_hotplug_journal && !qlist_empty(cpr_hotplug_journal)) {
        json = qobject_to_json(QOBJECT(cpr_hotplug_journal));
    }
    cpr_keep_str(CPR_HOTPLUG_NAME, json ? json->str : NULL, json != NULL);
}
CPR_KEEPER(cpr_hotplug_keep)

static void cpr_hotplug_block_unknown(const char *path, void *opaque)
{
    static const CprMode modes[] = { CPR_MODE_RESTART, CPR_MODE_TRANSFER };
    CprBlockerList ***tail = opaque;
    int i;

    if (!cpr_hotplug_known || g_hash_table_contains(cpr_hotplug_known, path)) {
        return;
    }
    for (i = 0; i < ARRAY_SIZE(modes); i++) {
        cpr_add_blocker(tail, modes[i], path,
                        "the device was added without an id or over HMP, "
                        "and the new process could not add it again; "
                        "remove it, and add it over QMP with an id");
    }
}

static void cpr_hotplug_blockers(CprBlockerList ***tail)
{
    cpr_hotplug_foreach_device(cpr_hotplug_block_unknown, tail);
}

static void __attribute__((constructor)) cpr_hotplug_init(void)
{
    cpr_add_blocker_fn(cpr_hotplug_blockers);
}
