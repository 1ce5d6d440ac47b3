"""`toptracks plan`: the freshness bound the request budget keeps, before anything is fetched."""

from toptracks_dagster import config


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
    rotation = RotationPlan(artists, markets, budget, RUNS_PER_DAY, target)
    print("\n".join(rotation.lines()))
    return 0 if rotation.keeps_target else 3
