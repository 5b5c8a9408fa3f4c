/*
 * CPR: the named steps of an update, traced, and a stop at one for tests
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The processes of an update (the old QEMU, the new one, the one that
 * takes a VM back) pass named steps, listed in docs/cpr.rst ("What a
 * failure leaves behind").  Each is a trace event with the process's
 * pid, so that one trace of several processes tells them apart.
 *
 * For tests of failures: with QEMU_CPR_STOP_AT=STEP in its environment,
 * a process stops itself (SIGSTOP, every thread) when it reaches STEP,
 * so that a test can kill it there, at a point it knows was reached, or
 * let it go on (SIGCONT).
 */

#include "qemu/osdep.h"
#include "cpr-internal.h"
#include "trace.h"

void cpr_step(const char *name)
{
    const char *stop = getenv(CPR_STOP_AT_ENV);

    trace_cpr_step(name, getpid());
    if (stop && !strcmp(stop, name)) {
        raise(SIGSTOP);
    }
}
