/*
 * Tap devices kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef NET_TAP_CPR_H
#define NET_TAP_CPR_H

#include "net/net.h"

/* The most tap netdev queues tap_cpr_list() gives */
#define TAP_CPR_MAX 1024

/* The position of @nc among the queues of its tap netdev */
int tap_cpr_queue(NetClientState *nc);

/* Fill @ncs (TAP_CPR_MAX entries) with every tap netdev queue; how many */
int tap_cpr_list(NetClientState **ncs);

/* New process: the kept descriptor of @netdev's queue @queue, or -1 */
int tap_cpr_take(const char *netdev, int queue);

#endif
