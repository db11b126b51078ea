"""Loopback stand-in for Kie's Suno cover API: a real HTTP server that costs no credits.

Start one in-process with ``KieStandin(StandinConfig(...)).start()`` (or as a
context manager), or from a shell with ``python -m kie_covers.standin`` (or ``covers standin``).

Its answers follow Kie's documents by default (``openapi/kie-cover.yaml``
beside this module is the contract, written from them, and the tests hold
the stand-in to it). The variants real Kie answers are known to show
(``null`` for ``""``, epoch times, codes only in the body, ``"data": null``
on errors, 409 for a duplicate) are a :class:`~.style.Style`: set in
:class:`StandinConfig`, changed with :meth:`KieStandin.set_style`, or chosen
per request with the ``X-Standin-Style`` header (see ``style``).

Fault triggers:

- Music task ids (the generate body's ``taskId``):

  - ``notfound…``: generate answers 404 "music task not found".
  - ``genfail…``: accepted and charged; the cover ends failed:
    successFlag 3, status ``GENERATE_COVER_FAILED``, errorCode 500, and a
    failure callback with code 501.
  - ``createfail…``: the same with status ``CREATE_TASK_FAILED`` and
    callback code 500.
  - ``genfail<code>-…`` / ``createfail<code>-…`` (or the id ending with the
    code, e.g. ``genfail531``): the failure callback carries ``<code>``;
    the documented ones are 400, 408, 500, 501 and 531. A 531 ("your
    credits have been refunded") gives the cover's credits back.
  - Any other id succeeds after ``cover_seconds`` (successFlag 0, then 2
    half-way, then 1; status ``PENDING`` then ``SUCCESS``).
  - Generating again for a music task whose cover is pending or made
    answers 400 (or 409, see ``Style.duplicate_code``) with the existing
    cover's ``data.taskId``, uncharged; after a failed cover it is accepted.

- Injected rules (:meth:`KieStandin.inject`, ``POST /_standin/faults``):
  every documented code (400, 401, 402, 404, 409, 422, 429, 455, 500) and
  some seen in the wild (433, 451, 501, 505) as ``"<code>"`` or
  ``"body-<code>"``, with a chosen ``form`` and ``data``; ``"malformed"``,
  ``"html"``, ``"empty"``, ``"reset"``, ``"slow"``, ``"no-data"``.
- Requests: a body over 1 MiB answers 413, a wrong method 405, a generate
  body without ``taskId`` or an http(s) ``callBackUrl`` 422, an unknown
  ``X-Standin-Style`` token 422.
- Account state: credits below one cover's cost answer 402
  (:meth:`KieStandin.set_credits`); more than the rate limit answers 429
  with ``Retry-After`` (:meth:`KieStandin.set_rate_limit`); wrong or
  missing keys answer 401.
- Callback delivery (:meth:`KieStandin.set_callback_mode`): send, drop,
  duplicate, delay.
"""

from .config import StandinConfig
from .server import KieStandin, main

__all__ = ["KieStandin", "StandinConfig", "main"]
