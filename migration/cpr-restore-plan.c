/*
 * A restore without parsing: the plan of a device state stream
 *
 * The first restore of a snapshot (or fork point) loads its device state
 * stream with a recorder attached (VMStateLoadRecorder) and keeps, in
 * stream order, what the load did: the pre_load and post_load hooks it
 * called on what, the bytes it stored where, the pointers it followed,
 * and the getters that do more than store what they read (timers, PCI
 * config space, temporary structures) with their part of the stream.
 * Later restores replay the plan: the same hooks in the same order, the
 * bytes copied straight to where they go, and only those getters run,
 * on a stream of their parts alone.  No section header, name, version or
 * field is looked at again.
 *
 * A section whose load a plan cannot hold (an old-style load, a buffer
 * the load allocates) is loaded from its part of the stream each time.
 * A plan is only good for the devices it was recorded on: it is
 * dropped when a savevm handler comes or goes (a device plugged or
 * unplugged), and each pointer the load followed is checked before the
 * plan goes past it.
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "migration/vmstate.h"
#include "migration/cpr.h"
#include "migration.h"
#include "qemu-file.h"
#include "savevm.h"
#include "sysemu/reset.h"
#include "cpr-internal.h"
#include "trace.h"

typedef enum CprPlanStep {
    CPR_PLAN_COPY,          /* @len bytes of the plan's data at @target */
    CPR_PLAN_PRE_LOAD,      /* @vmsd's pre_load on @target */
    CPR_PLAN_POST_LOAD,     /* @vmsd's post_load on @target, @n: version */
    CPR_PLAN_GET,           /* @field's getter, element @target, size @n */
    CPR_PLAN_POINTER,       /* at @target, still @value */
    CPR_PLAN_SECTION,       /* a whole section loaded from the stream */
} CprPlanStep;

typedef struct CprPlanOp {
    CprPlanStep step;
    int n;
    void *target;
    union {
        const VMStateDescription *vmsd;
        const VMStateField *field;
        void *value;
    };
    size_t off;             /* COPY: in data; SECTION: in sections */
    size_t len;             /* COPY, GET, SECTION: bytes */
} CprPlanOp;

struct CprPlan {
    GArray *ops;                /* CprPlanOp, in stream order */
    GByteArray *data;           /* what COPY steps store */
    GByteArray *gets;           /* the parts GET steps read, each + EOF */
    QEMUFile *gets_file;        /* reading it, rewound at each replay */
    GByteArray *sections;       /* sections loaded whole, each + EOF */
    GPtrArray *section_names;   /* ... their names */
    uint64_t generation;        /* qemu_savevm_handlers_generation() */
    unsigned failures;          /* replays in a row that failed */
    GArray *reset;              /* ResetStep: the machine reset, or NULL */
    /* The types of the devices whose reset steps it leaves out */
    GPtrArray *reset_left_out;
    uint64_t reset_generation;  /* qemu_reset_generation() */
    ResetRecorder reset_rec;

    /* While recording */
    VMStateLoadRecorder rec;
    const uint8_t *stream;
    size_t stream_len;
    uint64_t covered;           /* the stream up to here is in the plan */
    bool failed;
    guint sec_ops;              /* the current section's first op... */
    guint sec_data;             /* ... and its first bytes of data... */
    guint sec_gets;             /* ... and of gets */
    uint64_t sec_from;
    char *sec_name;
    bool sec_whole;             /* load it from the stream, not a plan */
};

#define CPR_PLAN(r) container_of(r, CprPlan, rec)

static void cpr_plan_rec_reset_step(ResetRecorder *r, const ResetStep *step)
{
    CprPlan *p = container_of(r, CprPlan, reset_rec);
    const char *type;

    if (cpr_reset_step_redundant(step, &type)) {
        if (!g_ptr_array_find(p->reset_left_out, type, NULL)) {
            g_ptr_array_add(p->reset_left_out, (gpointer)type);
        }
        return;
    }
    g_array_append_val(p->reset, *step);
}

static void cpr_plan_add(CprPlan *p, CprPlanStep step, void *target,
                         const void *what, int n, size_t off, size_t len)
{
    CprPlanOp op = {
        .step = step, .n = n, .target = target, .value = (void *)what,
        .off = off, .len = len,
    };

    g_array_append_val(p->ops, op);
}

static void cpr_plan_rec_section_start(VMStateLoadRecorder *r,
                                       const char *idstr,
                                       uint32_t instance_id, uint64_t from)
{
    CprPlan *p = CPR_PLAN(r);

    if (from != p->covered) {
        p->failed = true;
    }
    p->sec_ops = p->ops->len;
    p->sec_data = p->data->len;
    p->sec_gets = p->gets->len;
    p->sec_from = from;
    p->sec_whole = false;
    g_free(p->sec_name);
    p->sec_name = g_strdup_printf("%s/%" PRIu32, idstr, instance_id);
}

static void cpr_plan_rec_section_end(VMStateLoadRecorder *r, uint64_t to)
{
    CprPlan *p = CPR_PLAN(r);
    uint8_t eof = QEMU_VM_EOF;

    if (to > p->stream_len || to < p->sec_from) {
        p->failed = true;
        return;
    }
    p->covered = to;
    if (!p->sec_whole) {
        return;
    }
    /* What the section's load did goes; its part of the stream stays */
    g_array_set_size(p->ops, p->sec_ops);
    g_byte_array_set_size(p->data, p->sec_data);
    g_byte_array_set_size(p->gets, p->sec_gets);
    cpr_plan_add(p, CPR_PLAN_SECTION, NULL, NULL, 0, p->sections->len,
                 to - p->sec_from + 1);
    g_byte_array_append(p->sections, p->stream + p->sec_from,
                        to - p->sec_from);
    g_byte_array_append(p->sections, &eof, 1);
    g_ptr_array_add(p->section_names, g_steal_pointer(&p->sec_name));
}

static void cpr_plan_rec_pre_load(VMStateLoadRecorder *r,
                                  const VMStateDescription *vmsd,
                                  void *opaque)
{
    cpr_plan_add(CPR_PLAN(r), CPR_PLAN_PRE_LOAD, opaque, vmsd, 0, 0, 0);
}

static void cpr_plan_rec_post_load(VMStateLoadRecorder *r,
                                   const VMStateDescription *vmsd,
                                   void *opaque, int version_id)
{
    cpr_plan_add(CPR_PLAN(r), CPR_PLAN_POST_LOAD, opaque, vmsd, version_id,
                 0, 0);
}

static void cpr_plan_rec_copy(VMStateLoadRecorder *r, void *dst, size_t len)
{
    CprPlan *p = CPR_PLAN(r);
    CprPlanOp *last = p->ops->len > p->sec_ops ?
        &g_array_index(p->ops, CprPlanOp, p->ops->len - 1) : NULL;

    /* Fields one after the other in memory: one copy */
    if (last && last->step == CPR_PLAN_COPY &&
        last->target + last->len == dst &&
        last->off + last->len == p->data->len) {
        last->len += len;
    } else {
        cpr_plan_add(p, CPR_PLAN_COPY, dst, NULL, 0, p->data->len, len);
    }
    g_byte_array_append(p->data, dst, len);
}

static void cpr_plan_rec_get(VMStateLoadRecorder *r, const VMStateField *field,
                             void *elem, int size, uint64_t from, uint64_t to)
{
    CprPlan *p = CPR_PLAN(r);
    uint8_t eof = QEMU_VM_EOF;

    if (to < from || to > p->stream_len) {
        p->failed = true;
        return;
    }
    cpr_plan_add(p, CPR_PLAN_GET, elem, field, size, 0, to - from);
    g_byte_array_append(p->gets, p->stream + from, to - from);
    /*
     * What the getter may peek at after its part (is a subsection next?)
     * is not the next getter's part, nor the end of the file
     */
    g_byte_array_append(p->gets, &eof, 1);
}

static void cpr_plan_rec_pointer(VMStateLoadRecorder *r, void **where,
                                 void *value)
{
    cpr_plan_add(CPR_PLAN(r), CPR_PLAN_POINTER, where, value, 0, 0, 0);
}

static void cpr_plan_rec_unrecordable(VMStateLoadRecorder *r,
                                      const char *what)
{
    CPR_PLAN(r)->sec_whole = true;
}

CprPlan *cpr_plan_new(void)
{
    CprPlan *p = g_new0(CprPlan, 1);

    p->ops = g_array_new(false, false, sizeof(CprPlanOp));
    p->data = g_byte_array_new();
    p->gets = g_byte_array_new();
    p->sections = g_byte_array_new();
    p->section_names = g_ptr_array_new_with_free_func(g_free);
    p->rec = (VMStateLoadRecorder) {
        .section_start = cpr_plan_rec_section_start,
        .section_end = cpr_plan_rec_section_end,
        .pre_load = cpr_plan_rec_pre_load,
        .post_load = cpr_plan_rec_post_load,
        .copy = cpr_plan_rec_copy,
        .get = cpr_plan_rec_get,
        .pointer = cpr_plan_rec_pointer,
        .unrecordable = cpr_plan_rec_unrecordable,
    };
    p->reset_rec.step = cpr_plan_rec_reset_step;
    p->reset_left_out = g_ptr_array_new();
    return p;
}

void cpr_plan_free(CprPlan *p)
{
    if (p) {
        g_array_free(p->ops, true);
        g_byte_array_free(p->data, true);
        if (p->gets_file) {
            cpr_buffer_input_close(p->gets_file);
        }
        g_byte_array_free(p->gets, true);
        g_byte_array_free(p->sections, true);
        g_ptr_array_free(p->section_names, true);
        if (p->reset) {
            g_array_free(p->reset, true);
        }
        g_ptr_array_free(p->reset_left_out, true);
        g_free(p->sec_name);
        g_free(p);
    }
}

void cpr_plan_record_start(CprPlan *p, const uint8_t *stream, size_t len)
{
    assert(!vmstate_load_recorder);
    p->stream = stream;
    p->stream_len = len;
    p->generation = qemu_savevm_handlers_generation();
    vmstate_load_recorder = &p->rec;
}

bool cpr_plan_record_end(CprPlan *p, bool loaded)
{
    vmstate_load_recorder = NULL;
    p->stream = NULL;
    g_clear_pointer(&p->sec_name, g_free);
    /* The whole stream up to its EOF byte, and nothing plugged meanwhile */
    if (!loaded || p->failed || p->covered + 1 != p->stream_len ||
        p->generation != qemu_savevm_handlers_generation()) {
        return false;
    }
    trace_cpr_plan_recorded(p->ops->len, p->data->len, p->gets->len,
                            p->section_names->len);
    return true;
}

void cpr_plan_reset_record_start(CprPlan *p)
{
    assert(!reset_recorder);
    if (p->reset) {
        g_array_free(p->reset, true);
    }
    p->reset = g_array_new(false, false, sizeof(ResetStep));
    g_ptr_array_set_size(p->reset_left_out, 0);
    p->reset_generation = qemu_reset_generation();
    reset_recorder = &p->reset_rec;
}

void cpr_plan_reset_record_end(CprPlan *p)
{
    reset_recorder = NULL;
    /* Nothing plugged or unplugged by the reset itself */
    if (p->reset_generation != qemu_reset_generation()) {
        g_clear_pointer(&p->reset, g_array_unref);
    }
}

bool cpr_plan_reset_usable(CprPlan *p)
{
    return p->reset && p->reset_generation == qemu_reset_generation();
}

void cpr_plan_reset_replay(CprPlan *p)
{
    guint i;

    for (i = 0; i < p->reset->len; i++) {
        reset_step_run(&g_array_index(p->reset, ResetStep, i));
    }
}

/* After this many failed replays in a row, restores load the stream */
#define CPR_PLAN_MAX_FAILURES 2

bool cpr_plan_usable(CprPlan *p)
{
    return p->generation == qemu_savevm_handlers_generation() &&
           p->failures < CPR_PLAN_MAX_FAILURES;
}

bool cpr_plan_given_up(CprPlan *p)
{
    return p->generation == qemu_savevm_handlers_generation() &&
           p->failures >= CPR_PLAN_MAX_FAILURES;
}

unsigned cpr_plan_failures(CprPlan *p)
{
    return p->failures;
}

void cpr_plan_set_failures(CprPlan *p, unsigned failures)
{
    p->failures = failures;
}

static int cpr_plan_load_section(CprPlan *p, CprPlanOp *op)
{
    QEMUFile *f = cpr_buffer_input(p->sections->data + op->off, op->len);
    int ret = qemu_loadvm_device_sections(f, migration_incoming_get_current());

    cpr_buffer_input_close(f);
    return ret;
}

bool cpr_plan_replay(CprPlan *p, Error **errp)
{
    QEMUFile *gets = p->gets_file;
    uint64_t at = 0;
    const char *what = NULL;
    int ret = 0;
    guint i;

    if (!cpr_plan_usable(p)) {
        error_setg(errp, "the devices changed since the restore plan was "
                   "made");
        return false;
    }
    if (gets) {
        qemu_file_rewind_input(gets);
    }
    for (i = 0; i < p->ops->len && !ret; i++) {
        CprPlanOp *op = &g_array_index(p->ops, CprPlanOp, i);

        switch (op->step) {
        case CPR_PLAN_COPY:
            memcpy(op->target, p->data->data + op->off, op->len);
            break;
        case CPR_PLAN_PRE_LOAD:
            /* As vmstate_load_state(): any value but 0 refuses */
            ret = op->vmsd->pre_load(op->target) ? -EINVAL : 0;
            what = op->vmsd->name;
            break;
        case CPR_PLAN_POST_LOAD:
            ret = MIN(op->vmsd->post_load(op->target, op->n), 0);
            what = op->vmsd->name;
            break;
        case CPR_PLAN_GET:
            if (!gets) {
                gets = p->gets_file = cpr_buffer_input(p->gets->data,
                                                       p->gets->len);
            }
            ret = MIN(op->field->info->get(gets, op->target, op->n,
                                           op->field), 0);
            at += op->len;
            if (!ret && (qemu_file_get_error(gets) ||
                         qemu_file_read_offset(gets) != at ||
                         qemu_get_byte(gets) != QEMU_VM_EOF)) {
                ret = -EINVAL;
            }
            at++;
            what = op->field->name;
            break;
        case CPR_PLAN_POINTER:
            if (*(void **)op->target != op->value) {
                ret = -ESTALE;
                what = "a pointer the plan followed";
            }
            break;
        case CPR_PLAN_SECTION:
            ret = MIN(cpr_plan_load_section(p, op), 0);
            what = "a section loaded from the stream";
            break;
        }
    }
    if (ret) {
        error_setg(errp, "the restore plan failed at step %u of %u (%s): %s",
                   i, p->ops->len, what ? what : "?", strerror(-ret));
        return false;
    }
    return true;
}

CprRestorePlanInfo *cpr_plan_info(CprPlan *p)
{
    CprRestorePlanInfo *info = g_new0(CprRestorePlanInfo, 1);
    guint i;

    for (i = 0; i < p->ops->len; i++) {
        switch (g_array_index(p->ops, CprPlanOp, i).step) {
        case CPR_PLAN_COPY:
            info->copies++;
            break;
        case CPR_PLAN_PRE_LOAD:
        case CPR_PLAN_POST_LOAD:
            info->hooks++;
            break;
        case CPR_PLAN_GET:
            info->getters++;
            break;
        default:
            break;
        }
    }
    info->copy_bytes = p->data->len;
    info->failures = p->failures;
    info->reset_steps = p->reset ? p->reset->len : 0;
    for (i = p->reset ? p->reset_left_out->len : 0; i-- > 0;) {
        QAPI_LIST_PREPEND(info->reset_left_out,
                          g_strdup(g_ptr_array_index(p->reset_left_out, i)));
    }
    for (i = p->section_names->len; i-- > 0;) {
        QAPI_LIST_PREPEND(info->streamed,
                          g_strdup(g_ptr_array_index(p->section_names, i)));
    }
    return info;
}
