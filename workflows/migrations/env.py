"""Alembic's entry point: runs the ledger's migrations on the connection that
`workflows.migrate` hands over (it holds the lock that makes one process the migrator)."""

from alembic import context

context.configure(connection=context.config.attributes["connection"],
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
