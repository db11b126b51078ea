"""``python -m standin``: run the Kie stand-in until SIGINT/SIGTERM.

See :func:`standin.server.main` for the options.
"""

from .server import main

if __name__ == "__main__":
    raise SystemExit(main())
