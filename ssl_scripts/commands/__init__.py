"""The commands users type: each module's run() is a console entry point (pyproject.toml) and what the script of
the same name at the repository root calls; `python -m ssl_scripts.commands.NAME` runs it too."""
