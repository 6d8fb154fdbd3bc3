"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Upgrade: <what changes, in order; DDL in reserve/sql/schema/<revision>_up.sql>.
Downgrade: <what it restores>.
Checked first: <what must hold before anything is changed (migration.refuse_rows)>.
Locks: <declare them in reserve/schema/locks.py DECLARED, both directions; take_locks takes them first>.
"""

from __future__ import annotations

from reserve.schema import migration

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}


def upgrade() -> None:
    migration.take_locks(revision, "upgrade")
    ${upgrades if upgrades else "raise NotImplementedError"}


def downgrade() -> None:
    migration.take_locks(revision, "downgrade")
    ${downgrades if downgrades else "raise NotImplementedError"}
