"""Marks this folder as comfystream's own node package.

A comfystream worker that loads the workspace skips a custom node package holding this file:
the nodes in it are the worker's built-in ones. `setup-workspace` replaces such a folder on
reinstall and refuses to touch one without it.
"""
