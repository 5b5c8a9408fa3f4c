/*
 * CPR stubs for programs without live update (tools, storage daemon)
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "migration/cpr.h"

bool cpr_is_incoming(void)
{
    return false;
}

bool cpr_takes_vm_over(void)
{
    return false;
}

bool cpr_is_recovery(void)
{
    return false;
}

bool cpr_recovery_replied(void)
{
    return false;
}

void cpr_mm_reply_sent(void)
{
}

bool cpr_mm_handing_back(void)
{
    return false;
}

void cpr_hotplug_note(const char *name, QDict *args)
{
}

void cpr_hotplug_device_gone(const char *path)
{
}

bool cpr_auto_load_wait(CprAutoLoadFn *fn, void *opaque)
{
    return false;
}

bool cpr_transfer_defer(CprDeferFn *fn, void *opaque)
{
    return false;
}

bool cpr_transfer_relaying(void)
{
    return false;
}

const char *cpr_relay_error(void)
{
    return NULL;
}

void cpr_save_fd(const char *name, int id, int fd)
{
}

void cpr_save_str(const char *name, const char *value)
{
}

void cpr_delete_fd(const char *name, int id)
{
}

void cpr_keep_fd(const char *name, int id, int fd, bool keep)
{
}

void cpr_keep_str(const char *name, const char *value, bool keep)
{
}

void cpr_add_keeper(CprKeepFn *fn)
{
}

void cpr_add_notifier(NotifierWithReturn *n)
{
}

int cpr_take_fd(const char *name, int id)
{
    return -1;
}

bool cpr_has_fd(const char *name, int id)
{
    return false;
}

char *cpr_take_str(const char *name)
{
    return NULL;
}

bool cpr_restoring(void)
{
    return false;
}
