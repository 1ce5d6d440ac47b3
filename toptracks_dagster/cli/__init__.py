"""`toptracks`: run the main job headless (recorded in the Dagster instance), or open the Dagster UI.

  toptracks run [--countries US,CA]   one run of `top_tracks_job` for the markets, then a summary
  toptracks dev                        the Dagster UI (webserver + daemon) on http://127.0.0.1:3000
  toptracks query track|top|popular    read the table: one track, an artist's top list, a market above N
  toptracks stack start|status|stop|reset   the local stack (Spotify emulator + DynamoDB) in the background
  toptracks plan                       what TOPTRACKS_REQUESTS_PER_DAY keeps: rotation, requests per run, staleness

With DAGSTER_DEPLOYMENT=local (the default) they use the local stack, starting it when it is not running:
Spotify emulator, DynamoDB Local (in memory, on 127.0.0.1) and a seeded SQLite artists table. It stays up
between commands until `toptracks stack stop`. With `prod` they use the config contract's variables.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from toptracks_dagster import config
from toptracks_dagster.cli.query import add_query_commands, run_query_command
from toptracks_dagster.cli.run import (
    add_run_commands,
    add_stack_command,
    run_job,
    run_stack_command,
    run_ui,
    use_local_stack,
)


def main(argv: list[str] | None = None) -> int:
    # The Dagster features used here (backfill policies, code references, partitioned checks) are marked beta or
    # preview; their warnings say nothing a user of this command can act on.
    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=PreviewWarning)
    warnings.filterwarnings("ignore", category=BetaWarning)
    parser = argparse.ArgumentParser(prog="toptracks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_commands(commands)
    add_query_commands(commands)
    add_stack_command(commands)
    add_plan_command(commands)
    args = parser.parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not as a traceback at exit
        return code
    except config.ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left (`toptracks query popular US --min 80 | head`): stop quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(args) -> int:
    if args.command == "stack":
        return run_stack_command(args.action)
    if args.command == "query":
        use_local_stack(out=sys.stderr)  # stdout is the answer (--json)
        return run_query_command(args)
    if args.command == "plan":
        return run_plan_command(args)
    if args.command == "run":
        return run_job(args)
    return run_ui(args.port)


def add_plan_command(commands) -> None:
    plan = commands.add_parser("plan", help="the freshness bound the request budget keeps, before anything is fetched")
    plan.add_argument("--artists", type=int, help="catalogue size (default: the last artist id snapshot)")
    plan.add_argument("--markets", type=int, help="markets (default: the number in TOPTRACKS_COUNTRIES)")
    plan.add_argument("--budget", type=int, help="requests per UTC day (default: TOPTRACKS_REQUESTS_PER_DAY)")
    plan.add_argument("--target-days", type=float, help="accepted list age (default: TOPTRACKS_FRESHNESS_TARGET_DAYS)")


def run_plan_command(args) -> int:
    """Print what the budget keeps. Exit 0 when it keeps the target, 3 when the catalogue is past it."""
    from toptracks_dagster.spotify.budget import RUNS_PER_DAY, RotationPlan

    artists = args.artists
    if artists is None:
        from toptracks_dagster.artists_db.assets import SnapshotUnreadable, read_snapshot
        from toptracks_dagster.deployments import build_resources

        try:
            artists = len(set(read_snapshot(build_resources()["raw_storage"])["ids"]))
        except SnapshotUnreadable as error:
            raise config.ConfigError(f"{error}; or give the catalogue size with --artists N") from None
    markets = args.markets or len(config.countries())
    budget = args.budget if args.budget is not None else config.requests_per_day()
    target = args.target_days if args.target_days is not None else config.freshness_target_days()
    if artists < 0 or markets < 1 or (budget is not None and budget < 1) or target <= 0:
        raise config.ConfigError("--artists must be >= 0, --markets, --budget and --target-days above 0")
    if budget is None:
        print(
            f"no request budget (TOPTRACKS_REQUESTS_PER_DAY unset): runs are not capped; a full refresh costs "
            f"{artists * markets:,} requests ({artists:,} artists x {markets} markets). Keeping every list within "
            f"{target:g} day(s) needs a budget of at least {-(-artists * markets // max(1, int(target))):,} a day."
        )
        return 0
    rotation = RotationPlan(
        artists, markets, budget, RUNS_PER_DAY, target, config.refresh_policy(), config.max_list_age_days()
    )
    print("\n".join(rotation.lines() + _expected_lines(rotation)))
    return 0 if rotation.keeps_target else 3


def _expected_lines(rotation) -> list[str]:
    """The attention-weighted stale share each policy keeps at this budget, from the pairs' learnt change rates
    and popularity in the stored raw partitions (the prior for pairs without history)."""
    from toptracks_dagster.spotify import freshness

    states = _stored_states()
    prior = freshness.pooled_prior(states)
    known = sum(1 for s in states if s.history.observed_days > 0)
    sample = freshness.plan_sample(states, prior, rotation.pairs)
    bound = rotation.bound_days
    if rotation.policy != "adaptive":  # what adaptive would keep with the configured bound
        bound = max(config.max_list_age_days() or rotation.target_days, rotation.rotation_bound_days)
    uniform = freshness.expected_stale_share(sample, rotation.budget, rotation.pairs, bound, "uniform")
    adaptive = freshness.expected_stale_share(sample, rotation.budget, rotation.pairs, bound, "adaptive")
    return [
        f"expected attention-weighted share of stale lists at this budget ({known:,} pairs with history; change-rate "
        f"prior {prior.rate:.3f} a day, worth {prior.days:.1f} days, for the others; attention of pairs without a list "
        f"as a Zipf 0.8 catalogue): uniform {uniform:.3f}, adaptive {adaptive:.3f} (hard bound {bound:g} d)"
        + ("" if uniform <= 0 else f", {adaptive / uniform:.2f} x uniform")
    ]


def _stored_states() -> list:
    """Every stored pair's planner state, from the raw partitions (none when storage holds none yet)."""
    from toptracks_dagster.artists_db.assets import read_snapshot, snapshot_attention
    from toptracks_dagster.deployments import build_resources
    from toptracks_dagster.spotify import freshness
    from toptracks_dagster.spotify.raw import RawPartition, RawPartitionIncomplete

    storage = build_resources()["raw_storage"]
    states = []
    for market in config.countries():
        try:
            partition = RawPartition.open_or_none(storage, market)
        except (RawPartitionIncomplete, config.PermanentError):
            partition = None
        states += partition.states if partition else []
    try:
        snapshot = read_snapshot(storage, missing_ok=True)
    except config.PermanentError:
        snapshot = None
    freshness.apply_attention(states, snapshot_attention(snapshot))
    return states
