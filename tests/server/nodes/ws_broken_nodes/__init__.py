"""A custom node package that fails to import: workspace-info must list it with its error."""

raise ImportError("ws_broken_nodes needs a module this environment lacks")
