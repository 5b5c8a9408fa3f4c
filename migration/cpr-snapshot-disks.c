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
 * can write (its image made in the temporary directory, then
 * blockdev-snapshot-sync of all of them in one transaction), and
 * unlinks its file at once: the guest's
 * writes from then on go there, and each restore empties it
 * (bdrv_make_empty) if the guest wrote it, so that the disk reads as at
 * the snapshot again.
 *
 * As with -snapshot, what the guest writes after savevm never reaches
 * the disk's image: the overlays live as long as the QEMU process, also
 * after delvm, and each savevm adds one more.  Anything that would take
 * the disks' images elsewhere (migration, cprsave, cpr-fork, a
 * checkpoint) would leave those writes behind: a migration blocker says
 * so from the first overlay on, for good.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-transaction.h"
#include "block/block.h"
#include "block/block_int.h"
#include "migration/blocker.h"
#include "sysemu/block-backend.h"
#include "cpr-internal.h"
#include "trace.h"

/* An overlay: its node, and the device whose disk it is the top of */
typedef struct CprSnapDisk {
    char *node;
    char *dev;                  /* blk_get_attached_dev_id() */
} CprSnapDisk;

static unsigned cpr_snapshot_disks_made;
static bool cpr_snapshot_disks_live;    /* an overlay exists */
static Error *cpr_snapshot_disks_blocker;

static void cpr_snap_disk_free(gpointer p)
{
    CprSnapDisk *d = p;

    g_free(d->node);
    g_free(d->dev);
    g_free(d);
}

/* The block backends of devices that can write their disk, one a node */
static GPtrArray *cpr_snapshot_writable_disks(void)
{
    GPtrArray *blks = g_ptr_array_new();
    g_autoptr(GHashTable) seen = g_hash_table_new(NULL, NULL);
    BlockBackend *blk = NULL;

    while ((blk = blk_all_next(blk))) {
        if (blk_get_attached_dev(blk) && blk_is_inserted(blk) &&
            blk_is_writable(blk) && g_hash_table_add(seen, blk_bs(blk))) {
            g_ptr_array_add(blks, blk);
        }
    }
    return blks;
}

bool cpr_snapshot_disks_prepare(Error **errp)
{
    g_autoptr(GPtrArray) blks = cpr_snapshot_writable_disks();

    if (!blks->len || cpr_snapshot_disks_blocker) {
        return true;
    }
    error_setg(&cpr_snapshot_disks_blocker, "disks are under overlays that "
               "savevm with cpr-snapshot=on made: what the guest wrote "
               "since exists in this QEMU process only");
    if (migrate_add_blocker(cpr_snapshot_disks_blocker, errp) < 0) {
        error_free(cpr_snapshot_disks_blocker);
        cpr_snapshot_disks_blocker = NULL;
        return false;
    }
    return true;
}

void cpr_snapshot_disks_unprepare(void)
{
    if (!cpr_snapshot_disks_live && cpr_snapshot_disks_blocker) {
        migrate_del_blocker(cpr_snapshot_disks_blocker);
        error_free(cpr_snapshot_disks_blocker);
        cpr_snapshot_disks_blocker = NULL;
    }
}

bool cpr_snapshot_disks_blocker_is(Error *err)
{
    return err && err == cpr_snapshot_disks_blocker;
}

/*
 * The overlay's image for @bs at @file, as blockdev-snapshot-sync would
 * make it, without its "Formatting ..." on QEMU's standard output
 */
static bool cpr_snapshot_disk_image(BlockDriverState *bs, const char *file,
                                    Error **errp)
{
    ERRP_GUARD();
    int64_t size = bdrv_getlength(bs);
    int flags = (bs->open_flags & ~(BDRV_O_SNAPSHOT | BDRV_O_COPY_ON_READ)) |
                BDRV_O_NO_BACKING;

    if (size < 0) {
        error_setg_errno(errp, -size, "cannot tell the size of a disk");
        return false;
    }
    bdrv_refresh_filename(bs);
    bdrv_img_create(file, "qcow2", bs->filename, bs->drv->format_name, NULL,
                    size, flags, true, errp);
    return !*errp;
}

/* blockdev-snapshot-sync of @blk's disk onto the image @file, as @node */
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
    s->mode = NEW_IMAGE_MODE_EXISTING;
    act->type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC;
    act->u.blockdev_snapshot_sync.data = s;
    return act;
}

GPtrArray *cpr_snapshot_disks_add(Error **errp)
{
    ERRP_GUARD();
    g_autoptr(GPtrArray) blks = cpr_snapshot_writable_disks();
    g_autoptr(GPtrArray) disks = g_ptr_array_new_with_free_func(
        cpr_snap_disk_free);
    g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(g_free);
    TransactionActionList *actions = NULL;
    guint i;

    for (i = 0; i < blks->len; i++) {
        BlockBackend *blk = g_ptr_array_index(blks, i);
        CprSnapDisk *d = g_new0(CprSnapDisk, 1);
        GError *gerr = NULL;
        char *file = NULL;
        int fd = g_file_open_tmp("qemu-cpr-disk-XXXXXX.qcow2", &file, &gerr);

        g_ptr_array_add(disks, d);
        if (fd < 0) {
            error_setg(errp, "cannot make a file for a disk's overlay: %s",
                       gerr->message);
            g_error_free(gerr);
            goto out;
        }
        close(fd);
        g_ptr_array_add(files, file);
        if (!cpr_snapshot_disk_image(blk_bs(blk), file, errp)) {
            goto out;
        }
        d->node = g_strdup_printf("cpr-snapshot-disk%u",
                                  cpr_snapshot_disks_made++);
        d->dev = blk_get_attached_dev_id(blk);
        QAPI_LIST_PREPEND(actions, cpr_snapshot_disk_action(blk, file,
                                                            d->node));
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
    cpr_snapshot_disks_live |= disks->len > 0;
    trace_cpr_snapshot_disks_add(disks->len);
    return g_steal_pointer(&disks);
}

/*
 * The block backend of @d's device, if the device is still there, in
 * *@blk; false if the overlay is no longer its disk's top over a backing
 * image (a block job or a command changed the disk since)
 */
static bool cpr_snapshot_disk_find(CprSnapDisk *d, BlockBackend **blk,
                                   Error **errp)
{
    BlockDriverState *bs = bdrv_find_node(d->node);

    *blk = NULL;
    while ((*blk = blk_all_next(*blk))) {
        g_autofree char *dev = blk_get_attached_dev(*blk) ?
                               blk_get_attached_dev_id(*blk) : NULL;

        if (dev && !strcmp(dev, d->dev)) {
            break;
        }
    }
    if (*blk && (!bs || blk_bs(*blk) != bs || !bdrv_cow_bs(bs))) {
        error_setg(errp, "the disk of device '%s' is no longer on the "
                   "overlay '%s' the snapshot put over it: take a new "
                   "snapshot", d->dev, d->node);
        return false;
    }
    return true;
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

bool cpr_snapshot_disks_empty(GPtrArray *disks, Error **errp)
{
    ERRP_GUARD();
    g_autofree BlockBackend **blks = NULL;
    guint i;

    if (!disks) {
        return true;
    }
    /* All of them checked before any changes */
    blks = g_new0(BlockBackend *, disks->len);
    for (i = 0; i < disks->len; i++) {
        if (!cpr_snapshot_disk_find(g_ptr_array_index(disks, i), &blks[i],
                                    errp)) {
            return false;
        }
    }
    for (i = 0; i < disks->len; i++) {
        BlockDriverState *bs = blks[i] ? blk_bs(blks[i]) : NULL;
        AioContext *ctx;
        int ret = 0;

        if (!bs) {
            continue;           /* gone with its device */
        }
        ctx = bdrv_get_aio_context(bs);
        aio_context_acquire(ctx);
        bdrv_drained_begin(bs);
        /* Emptying even an empty qcow2 rewrites its metadata and flushes */
        if (cpr_snapshot_disk_written(bs)) {
            ret = bdrv_make_empty((BdrvChild *)blk_root(blks[i]), errp);
        }
        bdrv_drained_end(bs);
        aio_context_release(ctx);
        if (ret < 0) {
            error_prepend(errp, "cannot empty the overlay of the disk of "
                          "device '%s': ",
                          ((CprSnapDisk *)g_ptr_array_index(disks, i))->dev);
            return false;
        }
    }
    return true;
}
