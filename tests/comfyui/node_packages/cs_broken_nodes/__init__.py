"""A custom node package that fails to import: its error must be reported, not fatal."""

raise ImportError("cs_broken_nodes needs a module this environment lacks")
