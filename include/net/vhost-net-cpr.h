/*
 * vhost-net devices kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef NET_VHOST_NET_CPR_H
#define NET_VHOST_NET_CPR_H

#include "net/net.h"

/*
 * For tap queue @nc, which is about to get a vhost-net device: the
 * descriptor the process before execve kept for it (whose owner it gave
 * up), or -1.  Called for every such queue, it also makes sure the next
 * cprsave restart keeps them.
 */
int vhost_net_cpr_take(NetClientState *nc);

#endif
