"""Reading what the Spotify API sent back: the JSON body, its error message, Retry-After, and what kind of
transport failure a requests exception stands for."""

from __future__ import annotations

import json

import requests
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry


def json_or_none(response: requests.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def api_error(body: object, status: int) -> dict:
    """Spotify's `{"error": {"status", "message"}}`, or a stand-in naming the status when the body has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return {"status": error.get("status", status), "message": str(error.get("message", ""))}
    return {"status": status, "message": f"HTTP {status}"}


def retry_after_seconds(response: requests.Response) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return 1.0
    try:
        return max(0.0, Retry().parse_retry_after(value))  # seconds or an HTTP date
    except Exception:  # urllib3's InvalidHeader on garbage
        return 1.0


def retries_exhausted(error: requests.RequestException) -> bool:
    """True when requests wrapped urllib3's MaxRetryError (the error happened before the response headers)."""
    return any(isinstance(arg, MaxRetryError) for arg in error.args)


def transport_problem(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout) or "timed out" in str(error).lower():
        return "timeout"
    return "connection failure"


def short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."
