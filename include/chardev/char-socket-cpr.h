/*
 * Socket chardevs kept open across cprsave restart
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef CHARDEV_CHAR_SOCKET_CPR_H
#define CHARDEV_CHAR_SOCKET_CPR_H

#include "chardev/char.h"
#include "io/net-listener.h"

/*
 * New process: add the listening sockets @chr had before the restart to
 * @listener; false if there are none.
 */
bool char_socket_cpr_adopt_listener(Chardev *chr, QIONetListener *listener);

/* New process: the connected socket @chr had before the restart, or -1 */
int char_socket_cpr_take_client(Chardev *chr);

#endif
