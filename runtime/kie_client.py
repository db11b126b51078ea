"""A small client for the three Kie endpoints a cover job needs.

One pooled `requests.Session` per worker process (see `get_client`), a timeout
on every call, Bearer auth. Every answer goes through `kie_covers.core.answers.interpret`;
network faults become `UpstreamError` whose text never holds the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import requests

from kie_covers.config import Secret, Settings, get_settings
from kie_covers.core import errors
from kie_covers.core.answers import ExistingCover, interpret
from kie_covers.core.masking import Masker
from kie_covers.core.schemas import GenerateDataSchema, RecordInfoDataSchema, validate_with
from kie_covers.runtime import metrics
from kie_covers.runtime.process import per_process

GENERATE_PATH = "/api/v1/suno/cover/generate"
RECORD_INFO_PATH = "/api/v1/suno/cover/record-info"
CREDIT_PATH = "/api/v1/chat/credit"
#: Short endpoint names for logs and metrics.
ENDPOINT_NAMES = {GENERATE_PATH: "generate", RECORD_INFO_PATH: "record-info",
                  CREDIT_PATH: "credit"}

#: successFlag values of record-info (0 and 2 are both "not yet").
PENDING, SUCCESS, GENERATING, FAILED = 0, 1, 2, 3


@dataclass(frozen=True)
class GenerateAccepted:
    """Answer of a generate call: the cover task id, and whether it already existed (also
    the step's outcome, `kie_covers.services.step`)."""

    cover_task_id: str
    #: True when Kie answered "already generated" with the existing cover's id.
    existing: bool


@dataclass(frozen=True)
class CoverInfo:
    """record-info, reduced to what a job needs."""

    cover_task_id: str
    success_flag: int
    images: list[str]
    error_code: int | None
    error_message: str | None
    #: When the cover task was created and ended, seconds since the epoch (None when
    #: not given); Kie writes ISO-8601 or epoch times, both are read.
    created_at: float | None = None
    completed_at: float | None = None


_generate_data = GenerateDataSchema()
_record_data = RecordInfoDataSchema()


def _session_for(base_url: str) -> requests.Session:
    """A pooled session whose environment settings are read once, not on every call.

    requests reads the proxy variables (and CA bundle variables) from the environment
    on every request, a sixth of a call's cost; they are read here once instead, with
    the same meaning (``HTTPS_PROXY``/``NO_PROXY`` for `base_url`,
    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``).
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session


class KieClient:
    """Calls Kie's generate, record-info and credit endpoints.

    Args:
        base_url: API root, e.g. ``https://api.kie.ai`` (no trailing slash).
        api_key: the Bearer key.
        timeout_s: seconds for connect and for read, on every call.
        code_table: ``KIE_CODE_TABLE`` name.
        session: a `requests.Session` to use (default: a new pooled one).
        mask: strips secrets from Kie's texts (default: the API key and credential
            patterns); every error this client raises has been through it.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        timeout_s: float,
        code_table: str = "kie",
        session: requests.Session | None = None,
        mask: Masker | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: Strips our secrets from every text Kie sends back before it is kept anywhere.
        self.mask = mask or Masker([api_key.reveal()])
        self.timeout_s = timeout_s
        self.code_table = code_table
        self._session = session or _session_for(self.base_url)
        self._headers = {
            "Authorization": f"Bearer {api_key.reveal()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"KieClient({self.base_url!r})"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.base_url + path
        endpoint = ENDPOINT_NAMES[path]
        try:
            response = self._session.request(
                method, url, headers=self._headers, timeout=self.timeout_s,
                allow_redirects=False, **kwargs,
            )
            body = response.content
        except requests.Timeout:
            metrics.inc("api_answers_total", endpoint=endpoint, code="timeout")
            raise errors.UpstreamError(
                f"no answer from Kie within {self.timeout_s:g}s ({method} {path})"
            ) from None
        except requests.RequestException as exc:
            metrics.inc("api_answers_total", endpoint=endpoint, code="network")
            # The exception's own text can quote the request; keep only its class.
            raise errors.UpstreamError(
                f"network error talking to Kie ({method} {path}): {type(exc).__name__}"
            ) from None
        try:
            data = interpret(response.status_code, response.headers, body, self.code_table)
        except errors.CoverError as error:
            metrics.inc("api_answers_total", endpoint=endpoint,
                        code=error.code if error.code is not None else "malformed")
            # Masked here, at the source: the message goes on to the job record, the
            # failure store, the Celery result and the app's notice.
            raise error.masked(self.mask) from None
        code = data.code if isinstance(data, ExistingCover) else 200
        metrics.inc("api_answers_total", endpoint=endpoint, code=code)
        return data

    def generate(self, music_task_id: str, callback_url: str) -> GenerateAccepted:
        """Ask for a cover of music task `music_task_id`; Kie will POST to `callback_url`."""
        data = self._call("POST", GENERATE_PATH, json={"taskId": music_task_id,
                                                        "callBackUrl": callback_url})
        if isinstance(data, ExistingCover):
            return GenerateAccepted(data.cover_task_id, existing=True)
        try:
            loaded = validate_with(_generate_data, data, "generate answer")
        except errors.InvalidPayload as bad:
            raise errors.UpstreamError(f"malformed answer: {bad.message}") from None
        return GenerateAccepted(loaded["taskId"], existing=False)

    def record_info(self, cover_task_id: str) -> CoverInfo:
        """Read a cover's progress (successFlag `PENDING`, `GENERATING`, `SUCCESS`, `FAILED`).

        Both shapes of record-info are read (see `RecordInfoDataSchema`), and the
        code in the HTTP status or only in the body (see `interpret`).
        """
        data = self._call("GET", RECORD_INFO_PATH, params={"taskId": cover_task_id})
        if isinstance(data, ExistingCover):
            raise errors.UpstreamError("record-info answered 'already generated'", data.code)
        try:
            loaded = validate_with(_record_data, data, "record-info answer")
        except errors.InvalidPayload as bad:
            raise errors.UpstreamError(f"malformed answer: {bad.message}") from None
        response = loaded.get("response") or {}
        images = list(response.get("images") or [])
        flag = int(loaded["successFlag"])
        if flag == SUCCESS and not images:
            raise errors.UpstreamError("record-info says success but lists no images")
        # "" (the documented "no error") and null both read as no message.
        message = loaded.get("errorMessage") or None
        return CoverInfo(loaded["taskId"], flag, images, loaded.get("errorCode"),
                         self.mask(message) if message else None,
                         loaded.get("createTime"), loaded.get("completeTime"))

    def credits(self) -> float:
        """Credits left on the account."""
        data = self._call("GET", CREDIT_PATH)
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise errors.UpstreamError("malformed answer: credit data is not a number")
        return float(data)


def build_client(settings: Settings) -> KieClient:
    """A new client from settings (requires KIE_API_KEY)."""
    return KieClient(settings.kie_base_url, settings.require_api_key(),
                     settings.kie_http_timeout, settings.kie_code_table,
                     mask=settings_masker(settings))


@per_process
def get_masker() -> Masker:
    """This process's masker of every secret in its settings (`settings_masker`)."""
    return settings_masker(get_settings())


def settings_masker(settings: Settings) -> Masker:
    """A masker for every secret in `settings`: the API key, the webhook keys, the
    callback secrets, the producer API's token and the console's."""
    return Masker(secret.reveal() for secret in (
        settings.kie_api_key, settings.kie_webhook_hmac_key, settings.app_webhook_key,
        settings.callback_secret, settings.callback_secret_previous, settings.api_token,
        settings.console_token) if secret is not None)


@per_process
def get_client() -> KieClient:
    """The client of this process: one pooled session per worker process (prefork
    children must not share the parent's sockets)."""
    return build_client(get_settings())
