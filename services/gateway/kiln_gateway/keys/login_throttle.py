"""Failed logins are throttled per email and per client address (`login_*` settings): each
attempt is counted atomically before its password is checked and taken back when it succeeds,
so the N+1th failure in a window is answered 429 with `Retry-After` even when the attempts
race. The counters use the rate limiter's store, so with the database store (the default)
every replica shares them; with the memory store each process counts on its own."""

import hashlib

from starlette.requests import Request

from kiln_gateway.config import GatewaySettings
from kiln_gateway.ratelimits import Quota, RateLimited, RateLimiter, set_response_headers


def client_address(request: Request, trusted_proxy_hops: int) -> str:
    """The client's address: the connection's, or with `trusted_proxy_hops` proxies in front,
    the entry of X-Forwarded-For that the outermost trusted proxy appended."""
    peer = request.client.host if request.client else "unknown"
    if trusted_proxy_hops <= 0:
        return peer
    forwarded = [
        part.strip()
        for value in request.headers.getlist("x-forwarded-for")
        for part in value.split(",")
        if part.strip()
    ]
    if len(forwarded) < trusted_proxy_hops:
        return forwarded[0] if forwarded else peer
    return forwarded[-trusted_proxy_hops][:64]


class LoginThrottle:
    """Failed logins per email and per client address, in fixed windows."""

    def __init__(self, limiter: RateLimiter, settings: GatewaySettings) -> None:
        self.limiter = limiter
        window = settings.login_failure_window_s
        self.email_quota = Quota(settings.login_max_failures_per_email, window)
        self.address_quota = Quota(settings.login_max_failures_per_ip, window)

    @staticmethod
    def email_bucket(email: str) -> str:
        return "login:email:" + hashlib.sha256(email.encode()).hexdigest()

    @staticmethod
    def address_bucket(address: str) -> str:
        return f"login:addr:{address}"

    async def attempt(self, request: Request, email: str, address: str) -> None:
        """Count an attempt; RateLimited when its email or address already failed too often."""
        for bucket, quota in (
            (self.address_bucket(address), self.address_quota),
            (self.email_bucket(email), self.email_quota),
        ):
            decision = await self.limiter.hit(bucket, quota)
            if not decision.allowed:
                set_response_headers(request, {"Retry-After": str(decision.reset_s)})
                raise RateLimited(f"Too many failed logins. Retry after {decision.reset_s} s.")

    async def succeeded(self, email: str, address: str) -> None:
        """Take the attempt back: only failures count."""
        await self.limiter.clear(self.email_bucket(email), self.email_quota)
        await self.limiter.hit(self.address_bucket(address), self.address_quota, amount=-1)
