"""What an image owner clicks in VCL's browser UI and its XML-RPC API does not offer, through the same
endpoints the page's JavaScript calls (a client of VCL's web, no VCL code here).

:func:`make_production`: Manage Images → Edit Image Profiles → Edit → "Revisions of this Image" →
the revision's "In Production" radio button (``image.php`` ``AJupdateRevisionProduction``), which
makes new reservations of the image use that revision.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from typing import Any


class WebUiError(RuntimeError):
    pass


class Browser:
    """A logged-in session of VCL's web UI (Local Account)."""

    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.post(mode="submitLogin", authtype="Local Account", userid=user, password=password)
        if "mode=logout" not in self.get(mode="viewRequests"):
            raise WebUiError(f"login of {user} failed")

    def get(self, **query: Any) -> str:
        with self.opener.open(f"{self.base}?{urllib.parse.urlencode(query)}", timeout=60) as r:
            return str(r.read().decode("utf-8", "replace"))

    def post(self, **data: Any) -> str:
        with self.opener.open(self.base, urllib.parse.urlencode(data).encode(), timeout=60) as r:
            return str(r.read().decode("utf-8", "replace"))

    def ajax(self, **data: Any) -> Any:
        """A continuation call answered by ``sendJSON`` (prefixed ``{} &&`` against JSON hijacking)."""
        body = re.sub(r"^\s*\{\}\s*&&\s*", "", self.post(**data))
        try:
            return json.loads(body)
        except ValueError as exc:
            raise WebUiError(f"not a JSON answer: {body[:2000]}") from exc


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def make_production(base: str, user: str, password: str, image_id: int, revision_id: int) -> None:
    """Make ``revision_id`` the production revision of ``image_id`` as its owner does in the UI."""
    ui = Browser(base, user, password)
    page = ui.get(mode="image")  # "Manage Images"
    found = re.search(r'name=continuation value="([^"]+)"[^>]*id="imageedit"', page)
    if not found:
        raise WebUiError("no 'Edit Image Profiles' choice on the Manage Images page")
    page = ui.post(continuation=found.group(1))
    found = re.search(r'id="editresourcecont" value="([^"]+)"', page)
    if not found:
        raise WebUiError("no edit continuation on the Image Profiles page")
    answer = ui.ajax(continuation=found.group(1), inline=1, rscid=image_id)
    html = "".join(s for s in _strings(answer) if "radrev" in s)
    found = re.search(rf"id=radrev{revision_id}\s+onclick=\"updateRevisionProduction\('([^']+)'\);\"", html)
    if not found:
        raise WebUiError(f"revision {revision_id} is not offered in image {image_id}'s revisions: {answer}")
    ui.post(continuation=found.group(1))
