/*
 * CPR: declarations shared by the files of migration/cpr*.c
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MIGRATION_CPR_INTERNAL_H
#define MIGRATION_CPR_INTERNAL_H

#include "qapi/qapi-types-cpr.h"

/* One RAM block as recorded in a state file */
typedef struct CprRamEntry {
    char *idstr;
    uint64_t used_length;
    uint64_t max_length;
} CprRamEntry;

/* A state file read into memory and checked (cpr-file.c) */
typedef struct CprFile {
    CprMode mode;
    char *machine;
    GArray *ram;                /* CprRamEntry */
    uint8_t *data;              /* whole file */
    size_t devices_offset;      /* device state stream within data */
    size_t devices_len;
} CprFile;

bool cpr_file_write(const char *path, CprMode mode, Error **errp);
/*
 * The device and CPU state stream, appended to @b / loaded from @data;
 * @cpu_ns, if not NULL, gets the time spent putting the CPUs' state back
 * into the accelerator.
 */
bool cpr_save_devices(GByteArray *b, Error **errp);
bool cpr_load_devices(const uint8_t *data, size_t len, int64_t *cpu_ns,
                      Error **errp);
/* The name of the section of a device state stream that holds byte @at */
char *cpr_devices_section_at(const uint8_t *data, size_t len, size_t at);
CprFile *cpr_file_read(const char *path, Error **errp);
bool cpr_file_load_devices(CprFile *cf, Error **errp);
void cpr_file_free(CprFile *cf);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CprFile, cpr_file_free)

/* cpr-ram.c */
GArray *cpr_ram_table_new(void);
GArray *cpr_ram_table(void);
void cpr_ram_table_free(GArray *table);
bool cpr_ram_check(GArray *table, Error **errp);
bool cpr_ram_apply(GArray *table, Error **errp);
void cpr_ram_add_blockers(CprBlockerList ***tail);
void cpr_ram_register_fds(void);
void cpr_ram_unregister_fds(void);

/* cpr-mm.c */
bool cpr_mm_prepare(Error **errp);
pid_t cpr_mm_start(Error **errp);
void cpr_mm_release(pid_t pid);
void cpr_mm_done(void);
void cpr_mm_incoming(pid_t pid);

/* cpr-snapshot.c */
CprSnapshotInfo *cpr_snapshot_info(void);

/* cpr-state.c */
void cpr_state_set_helper(pid_t pid);
/* After cpr_state_exec_prepare(): the descriptors execve will close */
GArray *cpr_state_exec_closing_fds(void);
void cpr_forget_fd(const char *name, int id);

#endif
