"""The ``sequences`` scenario's parts: reading the user's files, splitting and windowing, scoring."""
