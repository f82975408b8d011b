"""API authentication: bearer tokens with roles, and a rate limit on failed authentication.

Tokens (RELIABILITY S1-S5, S12): each configured token (`gateway.config.ApiTokenConfig`) is
kept only as the SHA-256 digest of its text, whether the config gave the token itself
(``token: ${ENV}``) or its hex digest (``token_sha256``). A presented token is hashed and
compared with **every** configured digest with `hmac.compare_digest`, so the time taken does
not depend on how much of a token matched nor on which entry matched. Token text never reaches
a log, an error message or a response.

Roles, in increasing rights: ``viewer`` (reads), ``operator`` (reads, writes points),
``admin`` (also reads the audit log).

Answers (RFC 6750 §3, §3.1):

===========================================  ======  =============================================
Situation                                    Status  ``WWW-Authenticate``
===========================================  ======  =============================================
no ``Authorization`` header                  401     ``Bearer realm="ot-gateway"``
not ``Bearer <token>``, or unknown token     401     ``Bearer realm="ot-gateway",
                                                     error="invalid_token"``
valid token, role without the right          403     ``Bearer realm="ot-gateway",
                                                     error="insufficient_scope"``
too many failures from this client address   429     none; ``Retry-After: <s>``
===========================================  ======  =============================================

Rate limit (S5): each 401 for an invalid token (not a missing one: that is no guess) counts
against the client address (the TCP peer; ``X-Forwarded-For`` is not trusted) for 60 s. With
``failed_auth_limit`` failures in the window, every request of that address that needs a token
gets 429 with ``Retry-After`` (seconds until the oldest failure leaves the window), before its
token is looked at, so a 429 never tells a guesser whether a token was right. Other addresses
are not affected. At most `MAX_TRACKED_CLIENTS` addresses are tracked (the least recently
failing is forgotten first), so memory stays bounded under a flood.

Source: RFC 6750 (OAuth 2.0 Bearer Token Usage) §2.1 (header syntax), §3 (WWW-Authenticate),
§3.1 (error codes); RFC 6585 §4 (429); RFC 9110 §10.2.3 (Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.config import ApiAuthConfig, ApiTokenConfig, Role

REALM = "ot-gateway"
WINDOW_S = 60.0
"""Failed authentications are counted over this sliding window [s]."""
MAX_TRACKED_CLIENTS = 10_000
"""Client addresses whose failures are remembered at most [count]."""
ROLE_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}
"""Rights order of the roles: a role has every right of the roles ranked below it."""

AuthReason = Literal["missing_token", "invalid_token", "insufficient_role", "rate_limited"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the configured token's ``name`` and ``role``."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """True when this principal has at least the rights of ``role``."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True, slots=True)
class AuthDenied:
    """Why a request is refused, and the HTTP answer for it.

    Attributes:
        status: 401, 403 or 429.
        reason: ``missing_token``, ``invalid_token``, ``insufficient_role`` or
            ``rate_limited``.
        detail: Human-readable message; never contains the presented token.
        headers: ``WWW-Authenticate`` (401, 403) or ``Retry-After`` (429).
        principal: The authenticated principal of a 403, else None.
    """

    status: int
    reason: AuthReason
    detail: str
    headers: dict[str, str]
    principal: Principal | None = None

    def exception(self) -> HTTPException:
        """The `HTTPException` that answers this refusal."""
        return HTTPException(status_code=self.status, detail=self.detail, headers=self.headers)


def token_digest(token: str) -> bytes:
    """SHA-256 digest (32 bytes) of a token's UTF-8 text, as configured hashes are made.

    A shell one-liner gives the same digest in hex: ``printf %s "$TOKEN" | sha256sum``.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


def _entry_digest(entry: ApiTokenConfig) -> bytes:
    if entry.token is not None:
        return token_digest(entry.token.get_secret_value())
    if entry.token_sha256 is None:  # excluded by the config validator
        msg = f"token {entry.name!r} has neither token nor token_sha256"
        raise ValueError(msg)
    return bytes.fromhex(entry.token_sha256)


class TokenVerifier:
    """Maps presented bearer tokens to principals by constant-time digest comparison.

    Args:
        tokens: The configured tokens; their secrets are reduced to digests here and the
            config objects are not kept.
    """

    def __init__(self, tokens: Sequence[ApiTokenConfig]) -> None:
        self._entries: tuple[tuple[bytes, Principal], ...] = tuple(
            (_entry_digest(t), Principal(t.name, t.role)) for t in tokens
        )

    def __len__(self) -> int:
        """Number of configured tokens."""
        return len(self._entries)

    def verify(self, presented: str) -> Principal | None:
        """The principal whose token is ``presented``, or None.

        Every configured digest is compared (`hmac.compare_digest`), match or not, so the
        time does not reveal which entry matched or how close a guess was.
        """
        digest = token_digest(presented)
        found: Principal | None = None
        for expected, principal in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = principal
        return found


class FailedAuthLimiter:
    """Counts failed authentications per client address over a sliding window.

    Args:
        limit: Failures allowed per client per window [count] (>= 1); at ``limit`` the client
            is refused until its oldest failure leaves the window.
        window: Window length [s].
        clock: Monotonic seconds (default `time.monotonic`).
        max_clients: Addresses remembered at most; the least recently failing is dropped.
    """

    def __init__(
        self,
        limit: int,
        *,
        window: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.failures_total = 0
        self.limited_total = 0

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds [s] until ``client`` may try again (>= 1), or None when it is not limited."""
        now = self._clock()
        times = self._recent(client, now)
        if times is None or len(times) < self.limit:
            return None
        self.limited_total += 1
        return max(1, math.ceil(times[0] + self.window - now))

    def record_failure(self, client: str) -> None:
        """Count one failed authentication of ``client`` now."""
        now = self._clock()
        self.failures_total += 1
        times = self._recent(client, now)
        if times is None:
            times = deque(maxlen=self.limit)
            self._failures[client] = times
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        times.append(now)


def _www_authenticate(error: str | None = None, description: str | None = None) -> str:
    """RFC 6750 §3 challenge: ``Bearer realm="..."[, error="..."][, error_description=...]``."""
    value = f'Bearer realm="{REALM}"'
    if error is not None:
        value += f', error="{error}"'
    if description is not None:
        value += f', error_description="{description}"'
    return value


class Authenticator:
    """Authentication and authorization of API requests for one app.

    Args:
        cfg: The ``api.auth`` section (tokens, ``read_requires_token``, ``failed_auth_limit``).
        clock: Monotonic seconds for the rate limit (tests may pass their own).

    Attributes:
        read_requires_token: GET routes need a token of any role.
        limiter: The failed-authentication rate limit.
    """

    def __init__(self, cfg: ApiAuthConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._verifier = TokenVerifier(cfg.tokens)
        self.read_requires_token = cfg.read_requires_token
        self.limiter = FailedAuthLimiter(cfg.failed_auth_limit, clock=clock)

    def authenticate(self, client: str, authorization: str | None) -> Principal | AuthDenied:
        """Who is calling, from the ``Authorization`` header; never raises.

        Args:
            client: The client address (rate-limit key).
            authorization: The raw ``Authorization`` header, or None.

        Returns:
            The `Principal`, or an `AuthDenied` (401 missing/invalid token, 429 rate limited).
        """
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return AuthDenied(
                429,
                "rate_limited",
                f"too many failed authentications from this address; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        if authorization is None or not authorization.strip():
            return AuthDenied(
                401,
                "missing_token",
                "authentication required: send Authorization: Bearer <token>",
                {"WWW-Authenticate": _www_authenticate()},
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        principal = None
        if scheme.lower() == "bearer" and token and " " not in token:
            principal = self._verifier.verify(token)
        if principal is None:
            self.limiter.record_failure(client)
            return AuthDenied(
                401,
                "invalid_token",
                "invalid token",
                {"WWW-Authenticate": _www_authenticate("invalid_token")},
            )
        return principal

    def authorize(self, outcome: Principal | AuthDenied, role: Role) -> Principal | AuthDenied:
        """``outcome`` if it is a principal with at least the rights of ``role``, else a 403."""
        if isinstance(outcome, AuthDenied) or outcome.may(role):
            return outcome
        return AuthDenied(
            403,
            "insufficient_role",
            f"role {outcome.role!r} may not do this (needs {role!r} or higher)",
            {"WWW-Authenticate": _www_authenticate("insufficient_scope")},
            principal=outcome,
        )

    def check(self, request: Request, role: Role) -> Principal | AuthDenied:
        """Authenticate ``request`` and authorize ``role``; never raises."""
        return self.authorize(
            self.authenticate(client_address(request), request.headers.get("authorization")),
            role,
        )


def client_address(request: Request) -> str:
    """The TCP peer address of a request (``"unknown"`` when the server gives none)."""
    return request.client.host if request.client is not None else "unknown"


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="API token (RFC 6750): `Authorization: Bearer <token>`; see docs/security.md",
)
"""Declares the bearer scheme in OpenAPI (Swagger's Authorize button); parsing is ours."""

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def get_authenticator(request: Request) -> Authenticator:
    """The app's `Authenticator` (``app.state.auth``)."""
    auth: Authenticator = request.app.state.auth
    return auth


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


def require(role: Role) -> Callable[..., object]:
    """A dependency that admits only principals with at least the rights of ``role``.

    Raises (from the dependency):
        HTTPException: 401, 403 or 429 as `Authenticator.authenticate` / `authorize` decide.
    """

    async def dependency(
        request: Request,
        auth: AuthenticatorDep,
        _bearer: BearerDep,
    ) -> Principal:
        outcome = auth.check(request, role)
        if isinstance(outcome, AuthDenied):
            raise outcome.exception()
        return outcome

    dependency.__name__ = f"require_{role}"
    return dependency


async def require_reader(
    request: Request,
    auth: AuthenticatorDep,
    _bearer: BearerDep,
) -> Principal | None:
    """Reads: any valid token when ``read_requires_token``, else open (None, token ignored).

    Raises:
        HTTPException: 401 or 429 when a token is required and not valid.
    """
    if not auth.read_requires_token:
        return None
    outcome = auth.check(request, "viewer")
    if isinstance(outcome, AuthDenied):
        raise outcome.exception()
    return outcome
