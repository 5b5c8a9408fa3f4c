/*
 * Tap devices kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Before execve, the descriptor of every tap netdev queue is registered
 * in the CPR state as "tap:<netdev id>" with the queue's position.  The
 * new process, creating the same netdev from the same command line, takes
 * the kept descriptor instead of opening the tap again and does not run
 * the ifup script: the interface is never closed, so its link does not
 * go down and its configuration (addresses, bridge port) stays.
 */

#include "qemu/osdep.h"
#include "net/net.h"
#include "net/tap.h"
#include "migration/cpr.h"
#include "net/tap-cpr.h"

static char *tap_cpr_name(const char *netdev)
{
    return g_strdup_printf("tap:%s", netdev);
}

int tap_cpr_list(NetClientState **ncs)
{
    /* (it counts the clients it could not store too) */
    int n = MIN(qemu_find_net_clients_except(NULL, ncs,
                                             NET_CLIENT_DRIVER_NIC,
                                             TAP_CPR_MAX), TAP_CPR_MAX);
    int i, taps = 0;

    for (i = 0; i < n; i++) {
        if (ncs[i]->info->type == NET_CLIENT_DRIVER_TAP) {
            ncs[taps++] = ncs[i];
        }
    }
    return taps;
}

int tap_cpr_queue(NetClientState *nc)
{
    NetClientState *ncs[TAP_CPR_MAX];
    int n = tap_cpr_list(ncs);
    int i, queue = 0;

    /* Queues of one netdev share its id, in creation order. */
    for (i = 0; i < n && ncs[i] != nc; i++) {
        queue += !strcmp(ncs[i]->name, nc->name);
    }
    return queue;
}

/* The tap descriptors of every netdev (each queue) cross execve */
static void tap_cpr_keep(bool keep)
{
    NetClientState *ncs[TAP_CPR_MAX];
    int n = tap_cpr_list(ncs);
    int i;

    for (i = 0; i < n; i++) {
        g_autofree char *name = tap_cpr_name(ncs[i]->name);

        cpr_keep_fd(name, tap_cpr_queue(ncs[i]), tap_get_fd(ncs[i]), keep);
    }
}
CPR_KEEPER(tap_cpr_keep)

int tap_cpr_take(const char *netdev, int queue)
{
    g_autofree char *name = tap_cpr_name(netdev);

    return cpr_is_incoming() ? cpr_take_fd(name, queue) : -1;
}
