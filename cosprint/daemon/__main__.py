"""`python -m cosprint.daemon`: how the drivers start cosprintd (see `cli`)."""

import os

from cosfail.cosprint.daemon.cli import flushed, main

# What the daemon writes is fsynced as it goes, and every thread that writes has been
# joined: skip the interpreter's teardown of its modules, tens of ms of every stop.
os._exit(flushed(main()))
