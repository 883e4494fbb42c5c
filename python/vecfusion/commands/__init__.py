"""Subcommands of the ``vecfusion`` CLI (see ``vecfusion.cli``)."""
