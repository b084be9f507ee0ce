"""Requests to a provider's API through an Apache libcloud connection (its authentication,
JSON and HTTP errors), with the request bodies written by the provider's module, and every
refusal turned into one sentence."""

from __future__ import annotations

import json
import re
from typing import Any

import requests
from libcloud.common.base import ConnectionKey

from mailfleet.provision.base import ProviderError, refused, unreachable

# what the operator fixes in mailfleet.toml or the token, not by trying again
SETTING_STATUSES = (400, 401, 403, 404, 422)


class LibcloudAPI:
    name = ""  # the provider, as sentences name it
    token_variable = ""  # where its token may come from (besides a token file)
    version = ""  # the path prefix of its API ("/v2")

    def __init__(self, connection: ConnectionKey):
        self._connection = connection

    def request(self, what: str, path: str, method: str = "GET",
                params: dict | None = None, body: dict | None = None) -> Any:
        """The answer's JSON (an empty dict for none); `what` finishes "refused to ..."."""
        try:
            answer = self._connection.request(
                f"{self.version}{path}", params=params or {}, method=method,
                data=json.dumps(body) if body is not None else None)
            return answer.object or {}
        except (requests.RequestException, OSError) as err:
            raise unreachable(self.name, what, err) from None
        except Exception as err:  # libcloud's refusals differ by provider (VultrException,
            # BaseHTTPError, InvalidCredsError): each carries the HTTP status and a message
            status = getattr(err, "code", None) or getattr(err, "http_code", None)
            if not isinstance(status, int):
                raise ProviderError(f"{self.name} gave an answer mailfleet cannot read when "
                                    f"asked to {what}: {type(err).__name__}.") from None
            message = str(getattr(err, "message", None) or getattr(err, "value", None) or "")
            message = re.sub(r"\s*\(code: \d+\)$", "", message).strip().rstrip(".")
            raise refused(self.name, what, f"{message or 'no reason given'} (HTTP {status})",
                          status in SETTING_STATUSES,
                          self.token_variable if status == 401 else None) from None
