/*
 * Socket chardevs kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Before execve, the listening sockets and the connected socket of every
 * socket chardev are registered in the CPR state under the chardev's id.
 * The new process, creating the same chardev from the same command line,
 * listens on the kept sockets instead of binding new ones (so clients
 * that connect during the restart wait in the backlog) and takes the kept
 * connection as its client, so the peer sees no disconnect.
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "chardev/char-socket.h"
#include "chardev/char-socket-cpr.h"
#include "chardev-internal.h"
#include "qapi/error.h"
#include "migration/cpr.h"

static char *cpr_name(Chardev *chr, const char *what)
{
    return g_strdup_printf("chardev:%s:%s", chr->label, what);
}

static int char_socket_cpr_keep_one(Object *obj, void *opaque)
{
    bool keep = GPOINTER_TO_INT(opaque);
    Chardev *chr = (Chardev *)object_dynamic_cast(obj, TYPE_CHARDEV_SOCKET);
    g_autofree char *listen = NULL, *conn = NULL;
    SocketChardev *s;
    size_t i;

    if (!chr) {
        return 0;
    }
    s = SOCKET_CHARDEV(chr);
    listen = cpr_name(chr, "listen");
    conn = cpr_name(chr, "conn");
    for (i = 0; s->listener && i < s->listener->nsioc; i++) {
        cpr_keep_fd(listen, i, s->listener->sioc[i]->fd, keep);
    }
    cpr_keep_fd(conn, 0, s->sioc ? s->sioc->fd : -1,
                keep && s->state == TCP_CHARDEV_STATE_CONNECTED && s->sioc);
    return 0;
}

/* Listening sockets and their connected client cross execve */
static void char_socket_cpr_keep(bool keep)
{
    object_child_foreach(get_chardevs_root(), char_socket_cpr_keep_one,
                         GINT_TO_POINTER(keep));
}
CPR_KEEPER(char_socket_cpr_keep)

bool char_socket_cpr_adopt_listener(Chardev *chr, QIONetListener *listener)
{
    g_autofree char *name = cpr_name(chr, "listen");
    int i, fd;

    if (!cpr_is_incoming()) {
        return false;
    }
    for (i = 0; (fd = cpr_take_fd(name, i)) >= 0; i++) {
        Error *err = NULL;
        QIOChannelSocket *sioc = qio_channel_socket_new_fd(fd, &err);

        if (!sioc) {
            warn_reportf_err(err, "chardev %s: kept socket: ", chr->label);
            close(fd);
            continue;
        }
        qio_net_listener_add(listener, sioc);
        object_unref(OBJECT(sioc));
    }
    return listener->nsioc > 0;
}

int char_socket_cpr_take_client(Chardev *chr)
{
    g_autofree char *name = cpr_name(chr, "conn");

    return cpr_is_incoming() ? cpr_take_fd(name, 0) : -1;
}
