/*
 * fd sets (add-fd) kept across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MONITOR_FDSET_CPR_H
#define MONITOR_FDSET_CPR_H

/* In the new process: rebuild the fd sets from the kept descriptors. */
void monitor_fdset_cpr_restore(void);

#endif
