"""PocketPilot: on-device code completion from a teacher model compressed for this machine.

Sub-packages (dependency direction: ``lsp_server -> runtime``, ``lsp_server -> compression``,
``compression -> evaluation -> runtime``; nothing imports ``lsp_server``):

- :mod:`pocketpilot.compression`: teacher -> compressed artifact, once.
- :mod:`pocketpilot.runtime`: load an artifact and complete code.
- :mod:`pocketpilot.evaluation`: line-completion tasks and metrics.
- :mod:`pocketpilot.lsp_server`: the pygls language server.
"""

__version__ = "0.1.0"
