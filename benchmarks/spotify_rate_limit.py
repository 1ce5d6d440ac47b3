"""Benchmark: the Spotify client under a rolling-window rate limit of R requests/s.

The emulator limits top-tracks requests to R * window per rolling window (Spotify's real window is 30 s) and
adds latency; the client is configured at requests_per_second=R. A good client finishes close to the floor
pairs / R and is almost never answered 429.

    .venv/bin/python benchmarks/spotify_rate_limit.py                  # R=20, 300 pairs, 5 s window
    .venv/bin/python benchmarks/spotify_rate_limit.py --fidelity --rate 5   # Spotify's 30 s window (~62 s)
    .venv/bin/python benchmarks/spotify_rate_limit.py --rate 10 --pairs 400 --concurrency 16

The limit only bites when pairs > R * window (with --fidelity, e.g. --rate 5 for 300 pairs); the script says
so when it does not. Exit status 1 when the target (wall time within 10 % of pairs/R, at most 1 % of requests
answered 429) or exactness (every outcome equal to the emulator's catalog) is missed.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from toptracks_dagster.dev.spotify_emulator import (
    Catalog,
    EmulatorSettings,
    SpotifyEmulator,
    demo_artist_ids,
)
from toptracks_dagster.spotify.client import SpotifyClient

MARKETS = ("US", "CA")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="R: the emulator's limit and the client's rate")
    parser.add_argument("--pairs", type=int, default=300, help="(artist, market) pairs to fetch")
    parser.add_argument("--window", type=float, default=5.0, help="rolling window of the limit, seconds")
    parser.add_argument("--fidelity", action="store_true", help="use Spotify's 30 s window (overrides --window)")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.03,
        help="the pacer's margin below requests_per_second (the client's default is 0.03)",
    )
    args = parser.parse_args(argv)

    window = 30.0 if args.fidelity else args.window
    limit = round(args.rate * window)
    artists = demo_artist_ids((args.pairs + len(MARKETS) - 1) // len(MARKETS), seed=3)
    pairs = [(artist, market) for market in MARKETS for artist in artists][: args.pairs]
    client_id, client_secret = "benchmark-client", secrets.token_urlsafe(24)  # never printed
    settings = EmulatorSettings(latency_ms=args.latency_ms, rate_limit_requests=limit, rate_limit_window_s=window)

    with SpotifyEmulator(client_id, client_secret, settings=settings, catalog=Catalog(seed=3)) as emulator:
        client = SpotifyClient(
            client_id=client_id,
            client_secret=client_secret,
            api_base_url=emulator.base_url,
            token_url=emulator.token_url,
            concurrency=args.concurrency,
            requests_per_second=args.rate,
            max_retry_after_s=120.0,
            rate_headroom=args.headroom,
        )
        with client:
            client.check_credentials()
            started = time.monotonic()
            outcomes = []
            for market in MARKETS:
                ids = [artist for artist, m in pairs if m == market]
                outcomes.extend(client.iter_top_tracks(ids, market))
            wall = time.monotonic() - started
        served = emulator.stats.as_dict()
        wrong = sum(1 for o in outcomes if o.tracks != emulator.catalog.top_tracks(o.artist_id, o.market))

    floor = len(pairs) / args.rate
    ratio = wall / floor
    share_429 = served["rate_limited"] / max(1, served["requests"])
    stats = client.stats.snapshot()
    print(
        f"limit: {limit} requests per rolling {window:g} s window (R = {args.rate:g}/s), "
        f"latency {args.latency_ms:g} ms, client concurrency {args.concurrency}, requests_per_second {args.rate:g}, "
        f"headroom {args.headroom:g}"
    )
    print(f"pairs: {len(pairs)}   wall: {wall:.2f} s   pairs/R: {floor:.2f} s   ratio: {ratio:.3f}")
    print(
        f"requests served: {served['requests']}   429s: {served['rate_limited']} ({100 * share_429:.2f} %)   "
        f"client retries: {stats['retries']}   paused: {stats['paused_s']:.1f} s (summed over workers)   "
        f"peak in flight: {served['peak_in_flight']}"
    )
    print(f"outcomes: {len(outcomes)}, not equal to the catalog: {wrong}")
    if len(pairs) <= limit:
        print(
            f"note: {len(pairs)} pairs fit in one window of {limit}: the limit was never in reach; "
            "use more pairs or a lower --rate"
        )
    met = ratio <= 1.10 and share_429 <= 0.01 and wrong == 0 and len(outcomes) == len(pairs)
    print("target met" if met else "TARGET MISSED (ratio <= 1.10, 429 share <= 1 %, all outcomes exact)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
