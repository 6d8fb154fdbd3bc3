"""The data templates (tests/datasets.py) for the fault and traffic tests of this folder."""

from tests.datasets import at_head, below_swap, data_templates, in_window  # noqa: F401
