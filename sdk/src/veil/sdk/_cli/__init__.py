"""The ``veil`` command line's machinery and the SDK's own commands (private; see ``veil.sdk.cli``).

``_framework``: the exit-code table, the one error path, the shared options and readers.
``_app``: the parser tree (built-in commands plus the ``veil.commands`` entry points) and ``main``.
``attest``, ``models``, ``train``, ``audit``, ``policy``: the SDK's commands.
``_reference``: the Markdown reference of every command in docs/CLI.md.
"""
