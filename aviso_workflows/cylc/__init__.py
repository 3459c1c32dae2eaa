"""The Cylc 8 adapter: the ``aviso`` xtrigger, the ``cylc`` listener action and ``aviso-workflows cylc-notify``.

Cylc runs in an environment of its own (``.venv-cylc``: it pins an older protobuf and Jinja2); the
project is installed there too, without the Airflow and ecFlow extras, so that Cylc finds the xtrigger
through the entry point group ``cylc.xtriggers``. The listener that pushes releases runs anywhere and
talks to Cylc through its ``cylc`` command.
"""
