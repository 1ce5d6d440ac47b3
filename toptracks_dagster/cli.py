"""`toptracks`: run the main job headless (recorded in the Dagster instance), or open the Dagster UI.

  toptracks run [--countries US,CA]   one run of `top_tracks_job` for the markets, then a summary
  toptracks dev                        the Dagster UI (webserver + daemon) on http://127.0.0.1:3000
  toptracks query track|top|popular    read the table: one track, an artist's top list, a market above N
  toptracks stack start|status|stop|reset   the local stack (Spotify emulator + DynamoDB) in the background
  toptracks plan                       what TOPTRACKS_REQUESTS_PER_DAY keeps: rotation, requests per run, staleness

With DAGSTER_DEPLOYMENT=local (the default) they use the local stack, starting it when it is not running:
Spotify emulator, DynamoDB (DynamoDB Local, or moto without Java) and a seeded SQLite artists table. It stays up
between commands until `toptracks stack stop`. With `prod` they use the config contract's variables.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

from toptracks_dagster import config
from toptracks_dagster.dynamodb.queries import add_query_commands, run_query_command

DEFAULT_DAGSTER_HOME = "./dagster_home"


def main(argv: list[str] | None = None) -> int:
    # The Dagster features used here (backfill policies, code references, partitioned checks) are marked beta or
    # preview; their warnings say nothing a user of this command can act on.
    from dagster import BetaWarning, PreviewWarning

    from toptracks_dagster.common import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts: see its docstring
    warnings.filterwarnings("ignore", category=PreviewWarning)
    warnings.filterwarnings("ignore", category=BetaWarning)
    parser = argparse.ArgumentParser(prog="toptracks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run top_tracks_job for each country partition and print a summary")
    run.add_argument("--countries", help="comma list of partitions to run (default: all of TOPTRACKS_COUNTRIES)")
    run.add_argument(
        "--mode",
        default="due",
        choices=["due", "full", "changed", "stalest", "artists"],
        help="which artists to fetch: new ones and lists older than --max-age-hours (due, the default), all "
        "(full), new to a market (changed), the --limit oldest lists (stalest), or --artists",
    )
    run.add_argument(
        "--max-age-hours",
        type=float,
        default=20.0,
        help="due: fetch a stored list again once it is this old (default 20: a daily run refreshes everything)",
    )
    run.add_argument("--limit", type=int, default=0, help="stalest: (artist, market) pairs per market")
    run.add_argument("--artists", help="artists: comma list of artist ids to refresh")
    run.add_argument("--reason", help="why this refresh runs (recorded in the metadata)")
    run.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help=f"consent to deleting more than TOPTRACKS_MAX_DELETE_SHARE of a market (run tag "
        f"{config.ALLOW_MASS_DELETE_TAG})",
    )
    run.add_argument(
        "--log-level", default="WARNING", help="Dagster console log level (the instance keeps every event)"
    )
    dev = commands.add_parser("dev", help="start the Dagster UI and daemon (with the local stack when local)")
    dev.add_argument("--port", type=int, default=3000)
    add_query_commands(commands)
    stack = commands.add_parser("stack", help="the local stack in the background: start, status, stop, reset")
    stack.add_argument("action", choices=["start", "status", "stop", "reset"])
    plan = commands.add_parser("plan", help="the freshness bound the request budget keeps, before anything is fetched")
    plan.add_argument("--artists", type=int, help="catalogue size (default: the last artist id snapshot)")
    plan.add_argument("--markets", type=int, help="markets (default: the number in TOPTRACKS_COUNTRIES)")
    plan.add_argument("--budget", type=int, help="requests per UTC day (default: TOPTRACKS_REQUESTS_PER_DAY)")
    plan.add_argument("--target-days", type=float, help="accepted list age (default: TOPTRACKS_FRESHNESS_TARGET_DAYS)")
    args = parser.parse_args(argv)
    try:
        if args.command == "stack":
            return _stack(args.action)
        if args.command == "query":
            _use_local_stack(out=sys.stderr)  # stdout is the answer (--json)
            return run_query_command(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "run":
            return _run(args)
        return _dev(args.port)
    except config.ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2


def _use_local_stack(out=None) -> None:
    """With `local`, find the background stack (or start it) and export its variables for this process and the
    Dagster processes it starts. An explicit DYNAMODB_ENDPOINT_URL means other services: nothing is started."""
    if config.deployment() != config.LOCAL:
        return
    from toptracks_dagster.dev import stack

    if stack.wanted():
        out = out or sys.stdout
        started: list[str] = []
        try:
            os.environ.update(stack.ensure_local_stack(announce=started.append))
        except stack.StackError as error:
            raise config.ConfigError(str(error)) from None
        print(
            started[0] if started else f"local stack: {stack.describe(stack.load_state(stack.local_dir()))}",
            file=out,
            flush=True,
        )


def _prepare_environment(stack_guard: ExitStack) -> None:
    """Find or start the local stack when local, and give Dagster a persistent instance directory."""
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(DEFAULT_DAGSTER_HOME).resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    _use_local_stack()


def _stack(action: str) -> int:
    if config.deployment() != config.LOCAL:
        raise config.ConfigError("`toptracks stack` manages the local stack; DAGSTER_DEPLOYMENT is not local")
    from toptracks_dagster.dev import stack

    try:
        if action == "start":
            state = stack.start(announce=print)
            print(f"local stack running: {stack.describe(state)}")
            return 0
        if action == "stop":
            state = stack.stop()
            print("local stack stopped" if state else "local stack was not running")
            return 0
        if action == "reset":
            for line in stack.reset():
                print(line)
            return 0
        healthy, lines = stack.status_lines()
        print("\n".join(lines))
        return 0 if healthy else 3
    except stack.StackError as error:
        print(f"local stack: {error}", file=sys.stderr)
        return 1


def _run(args) -> int:
    with ExitStack() as stack_guard:
        _prepare_environment(stack_guard)
        # Imported only now: the definitions read the environment the stack just exported.
        from dagster import DagsterInstance

        from toptracks_dagster.definitions import defs
        from toptracks_dagster.run_summary import (
            free_slots_of_dead_runs,
            print_summary,
            summarize,
        )

        configured = config.countries()
        chosen = config.parse_countries(args.countries) if args.countries else configured
        unknown = [c for c in chosen if c not in configured]
        if unknown:
            raise config.ConfigError(
                f"{', '.join(unknown)} not among the partitions {','.join(configured)}; add to TOPTRACKS_COUNTRIES"
            )
        positions = sorted(configured.index(c) for c in chosen)
        if positions != list(range(positions[0], positions[-1] + 1)):
            raise config.ConfigError(f"--countries must be a contiguous range of {','.join(configured)} (one run)")
        job = defs.resolve_job_def("top_tracks_job")
        instance = DagsterInstance.get()
        for message in free_slots_of_dead_runs(instance):
            print(message, flush=True)
        refresh = {
            "mode": args.mode,
            "limit": args.limit,
            "max_age_hours": args.max_age_hours,
            "reason": args.reason or f"toptracks run --mode {args.mode}",
            "artist_ids": [a.strip() for a in (args.artists or "").split(",") if a.strip()],
        }
        run_config = {
            "loggers": {"console": {"config": {"log_level": args.log_level.upper()}}},
            "ops": {"raw_top_tracks": {"config": refresh}},
        }
        tags = {
            "dagster/asset_partition_range_start": configured[positions[0]],
            "dagster/asset_partition_range_end": configured[positions[-1]],
            "trigger": "toptracks run",
            # Lets a later `toptracks run` tell a run whose process died (kill -9) from one still working.
            "toptracks/pid": str(os.getpid()),
            "toptracks/host": socket.gethostname(),
        }
        if args.allow_mass_delete:
            tags[config.ALLOW_MASS_DELETE_TAG] = "true"
        markets = [configured[i] for i in range(positions[0], positions[-1] + 1)]
        print(f"running top_tracks_job for {', '.join(markets)} in one run (mode {args.mode}) ...", flush=True)
        started = time.monotonic()
        result = _execute_interruptibly(
            instance,
            lambda run_id: job.execute_in_process(
                run_config=run_config, instance=instance, tags=tags, run_id=run_id, raise_on_error=False
            ),
        )
        summary = summarize(result, markets, time.monotonic() - started)
        print_summary(summary)
        print(f"\nrun {result.run_id} recorded in the Dagster instance at {os.environ['DAGSTER_HOME']}")
        return 0 if summary.success else 1


def _execute_interruptibly(instance, execute):
    """Run `execute(run_id)` in a worker thread so that Ctrl-C and SIGTERM stop the command at once.

    Dagster's in-process execution defers SIGINT to its own checkpoints (a long fetch has none) when it runs on
    the main thread. Here the main thread only waits: on a signal it records the run as canceled, frees its pool
    slots and exits. Nothing is lost by stopping hard: raw partitions are written aside (published only after
    their checks) and the load keeps a journal, so the next run picks up exactly where this one stopped.
    """
    import signal
    import threading
    import uuid

    from toptracks_dagster.run_summary import cancel_run

    run_id = str(uuid.uuid4())
    outcome: dict = {}
    received: list[int] = []

    def work() -> None:
        try:
            outcome["result"] = execute(run_id)
        except BaseException as error:  # surfaced on the main thread
            outcome["error"] = error

    previous = {
        sig: signal.signal(sig, lambda number, _frame: received.append(number))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        worker = threading.Thread(target=work, name="toptracks-run", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            if received:
                name = signal.Signals(received[0]).name
                print(f"\n{name}: stopping run {run_id} ...", file=sys.stderr, flush=True)
                cancel_run(instance, run_id, f"stopped by {name} from the terminal or a supervisor")
                print(
                    f"run {run_id} canceled; its pool slots are free. The next run continues from the last "
                    "published data.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(128 + received[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _plan(args) -> int:
    """Print what the budget keeps. Exit 0 when it keeps the target, 3 when the catalogue is past it."""
    from toptracks_dagster.spotify.budget import ROLLING_INTERVAL_S, RotationPlan

    artists = args.artists
    if artists is None:
        from toptracks_dagster.artists_db.snapshot import SnapshotUnreadable, read_artist_ids
        from toptracks_dagster.deployments import build_resources

        try:
            artists = len(set(read_artist_ids(build_resources()["raw_storage"])))
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
        artists=artists, markets=markets, budget=budget, runs_per_day=86400 // ROLLING_INTERVAL_S, target_days=target
    )
    for line in rotation.lines():
        print(line)
    return 0 if rotation.keeps_target else 3


def _dev(port: int) -> int:
    with ExitStack() as stack_guard:
        _prepare_environment(stack_guard)
        target = (
            ["-w", "workspace.yaml"] if Path("workspace.yaml").exists() else ["-m", "toptracks_dagster.definitions"]
        )
        command = [sys.executable, "-m", "dagster", "dev", *target, "-h", "127.0.0.1", "-p", str(port)]
        try:
            return subprocess.call(command, env=os.environ.copy())
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
