#!/usr/bin/python3
"""terminado peer for bench/b-terminal.sh: one new `bash -l` per WebSocket at /websocket.

Usage: terminado_server.py PORT   (listens on 127.0.0.1 only)
"""
import sys

import tornado.ioloop
import tornado.web
from terminado import TermSocket, UniqueTermManager

port = int(sys.argv[1])
manager = UniqueTermManager(shell_command=["bash", "-l"])
app = tornado.web.Application([(r"/websocket", TermSocket, {"term_manager": manager})])
app.listen(port, address="127.0.0.1")
print("ready", flush=True)
tornado.ioloop.IOLoop.current().start()
