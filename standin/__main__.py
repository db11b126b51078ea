"""``python -m kie_covers.standin``: run the Kie stand-in until SIGINT/SIGTERM.

See :func:`kie_covers.standin.server.main` for the options.
"""

from .server import main

if __name__ == "__main__":
    raise SystemExit(main())
