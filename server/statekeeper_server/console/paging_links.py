"""Links of the console's paged lists: every link keeps the page's namespace and
filters, and a list can step back to newer pages although the API's page tokens
only lead forward (the tokens of the pages already seen ride in the URL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from aiohttp import web

MAX_TRAIL = 40
"""Page tokens kept for "newer" links; further back, the first page is a link away."""


def path(segments: Sequence[str]) -> str:
    """The console path of `segments`, each percent-encoded whole (so caller text
    cannot add path parts or a query)."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def href(
    request: web.Request,
    segments: Sequence[str],
    params: Mapping[str, str | Sequence[str]] | None = None,
) -> str:
    """The console URL of the path of `segments` (see `path`) with `?namespace=` of
    `request`, then the non-empty `params` (a sequence is one parameter repeated)."""
    query: list[tuple[str, str]] = [("namespace", request.query.get("namespace", "default"))]
    for name, value in (params or {}).items():
        if isinstance(value, str):
            if value:
                query.append((name, value))
        else:
            query.extend((name, item) for item in value)
    return path(segments) + "?" + urlencode(query)


@dataclass(frozen=True)
class Pager:
    """Where a page stands: its token (`page`, "" for the first) and the tokens of
    the newer pages that led to it (`back`, "," joined; absent on the first page)."""

    page: str
    back: tuple[str, ...]

    @classmethod
    def of(cls, request: web.Request) -> Pager:
        """The pager of `request`'s `page` and `back` query parameters."""
        back = tuple(request.query["back"].split(",")) if "back" in request.query else ()
        return cls(request.query.get("page", ""), back[-MAX_TRAIL:])

    def older(self, next_token: str) -> dict[str, str] | None:
        """Query parameters of the page after this one; None on the last page."""
        if not next_token:
            return None
        back = (*self.back, self.page)[-MAX_TRAIL:]
        return {"page": next_token, "back": ",".join(back)}

    def newer(self) -> dict[str, str] | None:
        """Query parameters of the page before this one; None on the first page."""
        if not self.page:
            return None
        if not self.back:
            return {}
        params = {"page": self.back[-1]}
        if len(self.back) > 1:
            params["back"] = ",".join(self.back[:-1])
        return params
