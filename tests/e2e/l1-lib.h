/*
 * What the test programs run inside the L1 guest share (l1-lib.c): TAP
 * output, files, our QEMU run on an L2 guest, its QMP monitor, cprsave
 * and cprload, and the hand-over of a transfer.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef TESTS_E2E_L1_LIB_H
#define TESTS_E2E_L1_LIB_H

#include <stddef.h>
#include <sys/types.h>

#define QEMU            "/usr/bin/qemu-system-x86_64"
#define QMP_PATH        "/tmp/qmp.sock"
#define STATE           "/tmp/vm.cpr"
#define CPR_SOCK        "/tmp/cpr.sock"
/* Where the L2 guests keep their mailbox */
#define MAILBOX         0x500000

extern pid_t qemu_pid;          /* the QEMU that runs the VM */
extern int qmp;                 /* our connection to its QMP socket */
/* Times of the last STOP and RESUME events (s), 0 if none */
extern double ev_stop, ev_resume;
extern int test_no, failed;     /* TAP: tests so far, any failed */
/* Called for more diagnostics when QMP does not come up */
extern void (*qmp_connect_failed)(void);

void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void result(int ok, const char *name);
double now(void);
int read_file(const char *path, char *buf, size_t len);
int write_file(const char *path, const char *s);

/*
 * Run QEMU with @argv, its output into /tmp/qemu.log.  A QEMU that takes
 * the VM over from the running one (@incoming) keeps its QMP socket; with
 * @memlock_kb >= 0 it may lock only that much memory (no CAP_IPC_LOCK).
 */
pid_t spawn_qemu(const char **argv, int incoming, long memlock_kb);
/*
 * The arguments every QEMU on an L2 guest has, into @argv: TCG, 128 MiB,
 * q35 with memfd-alloc @memfd (written into @machine, 32 bytes), the
 * multiboot @kernel and QMP at QMP_PATH; how many
 */
#define QEMU_MACHINE_LEN 32
int qemu_args(const char **argv, char *machine, int memfd,
              const char *kernel);
void show_qemu_log(void);
/* Connect to QMP_PATH of qemu_pid; 0 once commands can be sent */
int qmp_connect(void);
/* Send a command; the reply line (caller frees), NULL if QMP went away. */
char *qmp_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Run a command that must succeed; 1 if it did. */
int qmp_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Kill QEMU if one runs and close QMP */
void stop_qemu(void);
int read_mem(void *mb, size_t len);
/* cprsave restart to STATE, and cprload of it: 0 if each succeeded */
int cprsave(void);
int cprload(void);
/*
 * cprsave in @mode (@extra: more arguments) must fail, naming @expect;
 * 1 if it did.  cprsave_refused(): in mode restart.
 */
int cprsave_mode_refused(const char *mode, const char *extra,
                         const char *expect);
int cprsave_refused(const char *extra, const char *expect);
/* A file that the kernel cannot execute (its interpreter is missing) */
#define NOT_A_PROGRAM   "/tmp/not-a-program"
int make_not_a_program(void);
/* Wait up to @timeout s for @pid to exit; its wait status, or -1. */
int wait_exit(pid_t pid, double timeout);
int transfer_to(pid_t new_pid, const char *refused);

#endif
