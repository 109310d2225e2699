"""Business logic of the people function: fake data written to a Delta table."""

__version__ = "0.1.0"
