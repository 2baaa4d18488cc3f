"""The pygls language server (``pocketpilot serve``). Thin: handlers call the runtime.

Nothing imports this package; it imports pygls, :mod:`pocketpilot.runtime` and the public
API of :mod:`pocketpilot.compression`.
"""
