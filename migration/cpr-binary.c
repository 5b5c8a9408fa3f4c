/*
 * CPR: the mark of a binary that can take a VM over
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * cprsave restart executes a binary in the running VM's process.  A QEMU
 * without live update (Debian's own, say, back in place after our
 * package was removed) would ignore the CPR state and boot a new guest
 * on the VM's disks, while the VM's RAM waits in the helper for a
 * cprload that never comes.  So every binary of ours carries an ELF
 * note, "qemu-cpr", whose descriptor is the version of the CPR state it
 * reads (cpr-state.c), and cprsave reads the note of the binary it is
 * about to execute before it touches the VM.
 *
 * A script (#!) cannot be looked into: it is executed on trust, as
 * operators' wrappers are.
 */

#include "qemu/osdep.h"
#include <elf.h>
#include "qemu/bswap.h"
#include "qapi/error.h"
#include "migration/cpr.h"
#include "cpr-internal.h"
#include "trace.h"

#define CPR_NOTE_NAME "qemu-cpr"
#define CPR_NOTE_SECTION ".note.qemu-cpr"
#define CPR_NOTE_TYPE 1

typedef struct CprNote {
    Elf64_Nhdr hdr;
    char name[QEMU_ALIGN_UP(sizeof(CPR_NOTE_NAME), 4)];
    uint32_t state_version;
} CprNote;

/* This binary's mark (host byte order: the reader is a host like us) */
static const CprNote cpr_note
    __attribute__((section(CPR_NOTE_SECTION), aligned(4), used)) = {
    .hdr = {
        .n_namesz = sizeof(CPR_NOTE_NAME),
        .n_descsz = sizeof(uint32_t),
        .n_type = CPR_NOTE_TYPE,
    },
    .name = CPR_NOTE_NAME,
    .state_version = CPR_STATE_VERSION,
};

static bool cpr_binary_pread(int fd, void *buf, size_t len, off_t off)
{
    return pread(fd, buf, len, off) == len;
}

/*
 * The CPR state version in the note of the ELF file @fd, 0 if it has
 * none; -1 if @fd is not a 64-bit ELF file of this host.
 */
static int64_t cpr_binary_note_version(int fd)
{
    Elf64_Ehdr eh;
    Elf64_Shdr sh, strtab;
    CprNote note;
    char name[sizeof(CPR_NOTE_SECTION)];
    unsigned i;

    if (!cpr_binary_pread(fd, &eh, sizeof(eh), 0) ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 ||
        eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shstrndx >= eh.e_shnum ||
        !cpr_binary_pread(fd, &strtab, sizeof(strtab),
                          eh.e_shoff + eh.e_shstrndx * sizeof(sh))) {
        return -1;
    }
    for (i = 0; i < eh.e_shnum; i++) {
        if (!cpr_binary_pread(fd, &sh, sizeof(sh),
                              eh.e_shoff + i * sizeof(sh))) {
            return -1;
        }
        if (sh.sh_type != SHT_NOTE || sh.sh_name >= strtab.sh_size ||
            !cpr_binary_pread(fd, name, sizeof(name),
                              strtab.sh_offset + sh.sh_name) ||
            memcmp(name, CPR_NOTE_SECTION, sizeof(name))) {
            continue;
        }
        if (sh.sh_size < sizeof(note) ||
            !cpr_binary_pread(fd, &note, sizeof(note), sh.sh_offset) ||
            note.hdr.n_namesz != sizeof(CPR_NOTE_NAME) ||
            note.hdr.n_descsz != sizeof(uint32_t) ||
            note.hdr.n_type != CPR_NOTE_TYPE ||
            memcmp(note.name, CPR_NOTE_NAME, sizeof(CPR_NOTE_NAME))) {
            return 0;
        }
        return note.state_version;
    }
    return 0;
}

bool cpr_binary_check(const char *path, Error **errp)
{
    char start[2];
    int64_t version;
    int fd;

    if (access(path, X_OK) < 0) {
        error_setg_errno(errp, errno, "cannot execute '%s'", path);
        return false;
    }
    fd = qemu_open_old(path, O_RDONLY);
    if (fd < 0) {
        error_setg_errno(errp, errno, "cannot read '%s'", path);
        return false;
    }
    if (cpr_binary_pread(fd, start, sizeof(start), 0) &&
        !memcmp(start, "#!", 2)) {
        close(fd);
        trace_cpr_binary_script(path);
        return true;
    }
    version = cpr_binary_note_version(fd);
    close(fd);
    trace_cpr_binary_note(path, version);
    if (version < 0) {
        error_setg(errp, "'%s' is neither a 64-bit ELF executable nor a "
                   "script", path);
        return false;
    }
    if (version == 0) {
        error_setg(errp, "'%s' cannot take this VM over: it has no "
                   "'" CPR_NOTE_NAME "' note (a QEMU without live update "
                   "would boot a new guest in this VM's place)", path);
        return false;
    }
    if (version != CPR_STATE_VERSION) {
        error_setg(errp, "'%s' reads CPR state version %" PRId64 ", this "
                   "QEMU writes version %d", path, version,
                   CPR_STATE_VERSION);
        return false;
    }
    return true;
}
