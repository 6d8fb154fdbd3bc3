"""reserve-migrations: the capacity-overlap change for the booking database, and its rollout tooling."""

__version__ = "0.1.0"
