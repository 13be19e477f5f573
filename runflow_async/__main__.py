"""``python -m runflow_async``: the ``runflow-async`` command, where the script is not on PATH."""

from runflow_async._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
