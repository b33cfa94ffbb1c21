"""The CUPS driver: a node whose COSprint is a real `cupsd`.

The COSprint tables stay the domain's model: snapshots, restores and rehosts work on
them exactly as with the reference driver. What this driver adds is the print server
they describe: every server and BCS runs a `cupsd` of its own (its own ServerRoot,
spool, state and logs under the node's home, listening on the node's port), and the
objects a node hosts in its tables are kept equal to what that cupsd serves.

Mapping (rows whose `host` is this node ⇄ this node's cupsd; read back through IPP):
- printers (name, device, location) ⇄ a raw printer `name` (`lpadmin -p name -v device
  -L location`), read from CUPS-Get-Printers;
- resource_capabilities (printer, capability, value) ⇄ the printer's default option
  `capability-default=value` (`lpadmin -p P -o`), which `lpoptions -p P` shows as
  `capability=value`; read from the printer-defaults group;
- queues (name, printer) ⇄ a class `name` whose one member is the printer (member-names);
- defaults (name, queue, format) ⇄ the class's `media-default`, the format's paper as a
  PWG media name; the lowest-id default's queue is the cupsd's default destination
  (`lpadmin -d`, read with CUPS-Get-Default);
- formats, default_locks: CUPS has no such object; they are carried in the tables and
  snapshots only (a format reaches CUPS as the media of the defaults that use it).

With `[node.cups] sink = true` a printer's CUPS device URI is the table's device behind
the project's sink backend (`cosfail-sink:<device>`), which records each job it is
handed in `var/sink/<printer>.log` and prints nowhere. Printer state (enabled,
accepting) is operational state, not configuration: a destination is created enabled
and accepting; on a node whose epoch is not confirmed (stale, unverified) every
destination is stopped and rejects jobs, with a reason starting with `cosfail:`.

Keeping the two equal is a three-way merge per object, between what cupsd serves now
(read through IPP, never by reading a running cupsd's files), what this driver last
applied (`var/cups/applied.json`) and what the tables say:
- an object an administrator changed in CUPS (with lpadmin) and not in the tables is
  captured into the tables (`export_snapshot`, `stop`, `start`) — on a node serving as
  master or server only; elsewhere it is set aside in `var/reclaimed/`, never lost;
- an object the tables changed (restore, rehost, restart-check) is applied to cupsd
  with `lpadmin` (argument lists, no shell) when COSprint starts;
- both changed, or a CUPS object the tables cannot describe (a class of two printers,
  a printer with a PPD, a user allow-list, …), or a table row CUPS cannot take (a name
  CUPS refuses, a device that is not a URI, a paper with no PWG name, …) is reported by
  name, and nothing is changed: validation comes before the first write.
After applying, the driver reads cupsd again; anything cupsd did not keep as asked is
reported, never taken for done.

A client node runs no cupsd: its COSprint is its `client.conf` (`ServerName` the
master's cupsd), which `start` rewrites (re-pointing the client) and `stop` leaves in
place (without one, `lp` would fall back to a system cupsd); `submit` sends a job to the
cupsd that hosts the queue, as the client's tables say.

Spool: a cupsd's RequestRoot is the node's spool directory. The cupsd keeps a bounded
job history there (control files of finished jobs, `[node.cups] job_history` and
`max_jobs`), and the documents of unfinished jobs only. `failover --with-spool` copies
the failed server's into `var/spool-incoming/<server>/` on the BCS; once the BCS's cupsd
serves, each unfinished job found there is resubmitted with `lp` (its title, user,
copies and job options; documents in order) and its files kept in
`var/spool-resubmitted/<server>/`, its job-uuid recorded so that a second pass never
resubmits it again.

Modules: `conf` (the configuration as data, merge and diff; pure), `tablemap` (tables ⇄
CUPS), `spooled` (a spool's jobs), `cupsd` (the program and CUPS's tools), `sync` (the
role and the three-way sync), `driver` (the Driver calls).
"""

from cosfail.cosprint.drivers.cups.conf import ClassConf, CupsConf, CupsError, PrinterConf, merge
from cosfail.cosprint.drivers.cups.driver import CupsDriver
from cosfail.cosprint.drivers.cups.spooled import UNFINISHED, read_job

__all__ = ["UNFINISHED", "ClassConf", "CupsConf", "CupsDriver", "CupsError", "PrinterConf",
           "merge", "read_job"]
