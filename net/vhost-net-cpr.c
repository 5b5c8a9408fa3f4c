/*
 * vhost-net devices kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The kernel ties a vhost-net device to the address space of the process
 * that made itself its owner (VHOST_SET_OWNER): its worker moves packets
 * through that address space, and no other process can configure the
 * device until the owner gives it up (VHOST_RESET_OWNER, which also drops
 * the memory table, the rings and the tap).  execve replaces the address
 * space, so a descriptor that merely crossed it would name a device owned
 * by the old one.
 *
 * So before execve, once the VM is stopped (which stopped the devices and
 * read their ring positions into the virtio state), each tap netdev
 * queue's kernel vhost-net descriptor gives up its owner and is kept in
 * the CPR state as "vhost-net:<netdev id>" with the queue's position.
 * The new process, creating the same netdev, takes it instead of opening
 * /dev/vhost-net or using vhostfd=, which may name nothing there (libvirt
 * passes the descriptor at start-up, and the new process may lack the
 * right to open the device), and sets it up as a new one.  If execve
 * fails, each device is owned again and the VM resumes here.
 *
 * Transfer mode does not keep them: the new process, started beforehand,
 * has its own.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "net/net.h"
#include "net/tap.h"
#include "net/tap-cpr.h"
#include "net/vhost_net.h"
#include "net/vhost-net-cpr.h"
#include "migration/cpr.h"
#include "trace.h"

static NotifierWithReturn vhost_net_cpr_notifier;
static bool vhost_net_cpr_registered;

static char *vhost_net_cpr_name(const char *netdev)
{
    return g_strdup_printf("vhost-net:%s", netdev);
}

/* @fn on each tap queue's kernel vhost-net device; false if one failed */
static bool vhost_net_cpr_each(bool (*fn)(NetClientState *nc,
                                          VHostNetState *net, int fd,
                                          Error **errp),
                               Error **errp)
{
    NetClientState *ncs[TAP_CPR_MAX];
    int n = tap_cpr_list(ncs);
    bool ok = true;
    int i;

    for (i = 0; i < n; i++) {
        VHostNetState *net = tap_get_vhost_net(ncs[i]);
        int fd = net ? vhost_net_cpr_fd(net) : -1;

        if (fd >= 0 && !fn(ncs[i], net, fd, ok ? errp : NULL)) {
            ok = false;
        }
    }
    return ok;
}

/* Devices that gave up their owner for the execve being attempted */
static GPtrArray *vhost_net_cpr_released;

static bool vhost_net_cpr_keep(NetClientState *nc, VHostNetState *net,
                               int fd, Error **errp)
{
    g_autofree char *name = vhost_net_cpr_name(nc->name);
    int r = vhost_net_cpr_release(net);

    trace_vhost_net_cpr_keep(nc->name, fd, r);
    if (r < 0) {
        error_setg_errno(errp, -r, "netdev '%s': cannot give up the "
                         "vhost-net device for the new QEMU", nc->name);
        return false;
    }
    g_ptr_array_add(vhost_net_cpr_released, net);
    cpr_save_fd(name, tap_cpr_queue(nc), fd);
    return true;
}

static bool vhost_net_cpr_own_again(NetClientState *nc, VHostNetState *net,
                                    int fd, Error **errp)
{
    g_autofree char *name = vhost_net_cpr_name(nc->name);
    int r;

    if (!g_ptr_array_remove(vhost_net_cpr_released, net)) {
        return true;
    }
    cpr_delete_fd(name, tap_cpr_queue(nc));
    r = vhost_net_cpr_reown(net);
    trace_vhost_net_cpr_own_again(nc->name, fd, r);
    if (r < 0) {
        error_setg_errno(errp, -r, "netdev '%s': cannot own its vhost-net "
                         "device again", nc->name);
        return false;
    }
    return true;
}

static int vhost_net_cpr_notify(NotifierWithReturn *notifier, void *data)
{
    CprNotifyData *d = data;
    Error *err = NULL;

    switch (d->event) {
    case CPR_EVENT_EXEC:
        g_ptr_array_set_size(vhost_net_cpr_released, 0);
        return vhost_net_cpr_each(vhost_net_cpr_keep, d->errp) ? 0 : -1;
    case CPR_EVENT_EXEC_FAILED:
        if (!vhost_net_cpr_each(vhost_net_cpr_own_again, &err)) {
            /* The VM resumes; virtio-net cannot start its vhost */
            error_report_err(err);
        }
        return 0;
    default:
        return 0;
    }
}

int vhost_net_cpr_take(NetClientState *nc)
{
    g_autofree char *name = vhost_net_cpr_name(nc->name);

    if (!vhost_net_cpr_registered) {
        vhost_net_cpr_released = g_ptr_array_new();
        vhost_net_cpr_notifier.notify = vhost_net_cpr_notify;
        cpr_add_notifier(&vhost_net_cpr_notifier);
        vhost_net_cpr_registered = true;
    }
    return cpr_is_incoming() ? cpr_take_fd(name, tap_cpr_queue(nc)) : -1;
}
