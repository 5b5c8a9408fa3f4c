/*
 * Tap devices kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef NET_TAP_CPR_H
#define NET_TAP_CPR_H

/* New process: the kept descriptor of @netdev's queue @queue, or -1 */
int tap_cpr_take(const char *netdev, int queue);

#endif
