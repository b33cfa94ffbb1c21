"""`cosprintd`: the reference COSprint service, one real process per node.

It serves HTTP on its host's address (127.0.0.1 for `host = "localhost"`) and
`node.port`, accepts print jobs into its spool, prints them into per-printer sink files,
and forwards jobs for queues other nodes host. Its role is decided from the node's
designation file *and* the authoritative state in the ledger: a node whose epoch is
older than the domain's never acts as master (docs/architecture.md, invariant 2).
That decision is re-made before every act that matters (accepting or printing a job,
claiming a printing role in /status), not only on a timer, so split brain is impossible
by construction rather than by timing.

    python -m cosprint.daemon --domain PATH --node NAME

Modules: `cli` (command line, start and stop), `service` (routing and printing jobs),
`server` (HTTP), `keeper` (the role, re-decided with `cosprint.role`), `settings` (what
a start is handed, the databases it names), `spool` and `identity` (files and process
facts the drivers and workers share with the daemon).

Startup is on the failover critical path, where every node restarts at once: on SQLite
(tables and ledger) a start imports only the stdlib and cosprint's stdlib-only modules.
The reference driver hands the daemon its settings as JSON on stdin (`--settings-stdin`)
and learns that it serves from a line on a pipe (`--ready-fd`); started by hand, the
daemon reads the domain file itself (pydantic), and SQLAlchemy is imported only for a
database that is not an SQLite file or tables that do not exist yet.
"""
