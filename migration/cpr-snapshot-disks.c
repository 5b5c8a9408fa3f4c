/*
 * CPR snapshot: writable disks brought back with each restore
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Stock loadvm brings disks back from their qcow2 internal snapshots;
 * the in-memory snapshot holds guest RAM and device state only.  A guest
 * that wrote its disk after the snapshot would find its page cache back
 * at the snapshot and the disk not.  So savevm with
 * -machine cpr-snapshot=on puts a qcow2 overlay over each disk a device
 * can write (blockdev-snapshot-sync, all of them in one transaction),
 * in the temporary directory, and unlinks its file at once: the guest's
 * writes from then on go there, and each restore empties it
 * (bdrv_make_empty) if the guest wrote it, so that the disk reads as at
 * the snapshot again.
 *
 * As with -snapshot, what the guest writes after savevm never reaches
 * the disk's image: the overlays live as long as the QEMU process, also
 * after delvm.  Each savevm adds one more.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-transaction.h"
#include "block/block.h"
#include "block/block_int.h"
#include "sysemu/block-backend.h"
#include "cpr-internal.h"
#include "trace.h"

static unsigned cpr_snapshot_disks_made;

/* The block backends of devices that can write their disk */
static GPtrArray *cpr_snapshot_writable_disks(void)
{
    GPtrArray *blks = g_ptr_array_new();
    BlockBackend *blk = NULL;

    while ((blk = blk_all_next(blk))) {
        if (blk_get_attached_dev(blk) && blk_is_inserted(blk) &&
            blk_is_writable(blk)) {
            g_ptr_array_add(blks, blk);
        }
    }
    return blks;
}

/* blockdev-snapshot-sync of @blk's disk into @file, as node @node */
static TransactionAction *cpr_snapshot_disk_action(BlockBackend *blk,
                                                   const char *file,
                                                   const char *node)
{
    TransactionAction *act = g_new0(TransactionAction, 1);
    BlockdevSnapshotSync *s = g_new0(BlockdevSnapshotSync, 1);

    if (*blk_name(blk)) {
        s->has_device = true;
        s->device = g_strdup(blk_name(blk));
    } else {
        s->has_node_name = true;
        s->node_name = g_strdup(bdrv_get_node_name(blk_bs(blk)));
    }
    s->snapshot_file = g_strdup(file);
    s->has_snapshot_node_name = true;
    s->snapshot_node_name = g_strdup(node);
    s->has_format = true;
    s->format = g_strdup("qcow2");
    s->has_mode = true;
    s->mode = NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    act->type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC;
    act->u.blockdev_snapshot_sync.data = s;
    return act;
}

GPtrArray *cpr_snapshot_disks_add(Error **errp)
{
    ERRP_GUARD();
    g_autoptr(GPtrArray) blks = cpr_snapshot_writable_disks();
    g_autoptr(GPtrArray) nodes = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(g_free);
    TransactionActionList *actions = NULL;
    guint i;

    for (i = 0; i < blks->len; i++) {
        GError *gerr = NULL;
        char *file = NULL;
        int fd = g_file_open_tmp("qemu-cpr-disk-XXXXXX.qcow2", &file, &gerr);

        if (fd < 0) {
            error_setg(errp, "cannot make a file for a disk's overlay: %s",
                       gerr->message);
            g_error_free(gerr);
            goto out;
        }
        close(fd);
        g_ptr_array_add(files, file);
        g_ptr_array_add(nodes, g_strdup_printf("cpr-snapshot-disk%u",
                                               cpr_snapshot_disks_made++));
        QAPI_LIST_PREPEND(actions, cpr_snapshot_disk_action(
                              g_ptr_array_index(blks, i), file,
                              g_ptr_array_index(nodes, i)));
    }
    if (actions) {
        qmp_transaction(actions, false, NULL, errp);
    }
out:
    qapi_free_TransactionActionList(actions);
    /* Open or not, their files go: the overlays live in QEMU alone */
    for (i = 0; i < files->len; i++) {
        unlink(g_ptr_array_index(files, i));
    }
    if (*errp) {
        error_prepend(errp, "cannot put an overlay over the disks: ");
        return NULL;
    }
    trace_cpr_snapshot_disks_add(nodes->len);
    return g_steal_pointer(&nodes);
}

/*
 * The overlay @bs has data: the guest wrote the disk since the overlay
 * was last emptied (an error counts as data: it is emptied then)
 */
static bool cpr_snapshot_disk_written(BlockDriverState *bs)
{
    int64_t len = bdrv_getlength(bs), off = 0, pnum;

    while (off < len) {
        if (bdrv_is_allocated(bs, off, len - off, &pnum) != 0 || pnum <= 0) {
            return true;
        }
        off += pnum;
    }
    return len < 0;
}

bool cpr_snapshot_disks_empty(GPtrArray *nodes, Error **errp)
{
    guint i;

    for (i = 0; nodes && i < nodes->len; i++) {
        const char *name = g_ptr_array_index(nodes, i);
        BlockDriverState *bs = bdrv_find_node(name);
        BlockBackend *blk = NULL;

        if (!bs) {
            continue;           /* gone with its device */
        }
        while ((blk = blk_all_next(blk)) && blk_bs(blk) != bs) {
            /* the disk whose top it still is */
        }
        if (!blk) {
            error_setg(errp, "the overlay '%s' the snapshot put over a disk "
                       "is no longer its top: take a new snapshot", name);
            return false;
        }
        /* Emptying even an empty qcow2 rewrites its metadata and flushes */
        if (cpr_snapshot_disk_written(bs) &&
            bdrv_make_empty((BdrvChild *)blk_root(blk), errp) < 0) {
            error_prepend(errp, "cannot empty the disk's overlay '%s': ",
                          name);
            return false;
        }
    }
    return true;
}
