"""``python -m unsamv2_engine``: the ``unsamv2`` command line (see :mod:`unsamv2_engine.cli`)."""

from unsamv2_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
