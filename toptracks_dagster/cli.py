"""`toptracks`: run the main job headless (recorded in the Dagster instance), or open the Dagster UI.

  toptracks run [--countries US,CA]   one run per country partition of `top_tracks_job`, then a summary
  toptracks dev                        the Dagster UI (webserver + daemon) on http://127.0.0.1:3000
  toptracks query track|top|popular    read the table: one track, an artist's top list, a market above N
  toptracks stack start|status|stop|reset   the local stack (Spotify emulator + DynamoDB) in the background

With DAGSTER_DEPLOYMENT=local (the default) they use the local stack, starting it when it is not running:
Spotify emulator, DynamoDB (DynamoDB Local, or moto without Java) and a seeded SQLite artists table. It stays up
between commands until `toptracks stack stop`. With `prod` they use the config contract's variables.
"""

from __future__ import annotations

import argparse
import os
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
    warnings.filterwarnings("ignore", message=r".*(is currently in beta|is currently in preview).*")
    parser = argparse.ArgumentParser(prog="toptracks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run top_tracks_job for each country partition and print a summary")
    run.add_argument("--countries", help="comma list of partitions to run (default: all of TOPTRACKS_COUNTRIES)")
    run.add_argument("--log-level", default="WARNING", help="Dagster console log level (the instance keeps every event)")
    dev = commands.add_parser("dev", help="start the Dagster UI and daemon (with the local stack when local)")
    dev.add_argument("--port", type=int, default=3000)
    add_query_commands(commands)
    stack = commands.add_parser("stack", help="the local stack in the background: start, status, stop, reset")
    stack.add_argument("action", choices=["start", "status", "stop", "reset"])
    args = parser.parse_args(argv)
    try:
        if args.command == "stack":
            return _stack(args.action)
        if args.command == "query":
            _use_local_stack(out=sys.stderr)  # stdout is the answer (--json)
            return run_query_command(args)
        if args.command == "run":
            return _run(args.countries, args.log_level.upper())
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
        print(started[0] if started else f"local stack: {stack.describe(stack.load_state(stack.local_dir()))}",
              file=out, flush=True)


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


def _run(countries_arg: str | None, log_level: str) -> int:
    with ExitStack() as stack_guard:
        _prepare_environment(stack_guard)
        # Imported only now: the definitions read the environment the stack just exported.
        from dagster import DagsterInstance

        from toptracks_dagster.definitions import defs

        configured = config.countries()
        chosen = config.parse_countries(countries_arg) if countries_arg else configured
        unknown = [c for c in chosen if c not in configured]
        if unknown:
            raise config.ConfigError(
                f"{', '.join(unknown)} not among the partitions {','.join(configured)}; add to TOPTRACKS_COUNTRIES"
            )
        job = defs.resolve_job_def("top_tracks_job")
        instance = DagsterInstance.get()
        rows, failed = [], []
        run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
        for country in chosen:
            print(f"running top_tracks_job for partition {country} ...", flush=True)
            started = time.monotonic()
            result = job.execute_in_process(
                run_config=run_config, instance=instance, partition_key=country, raise_on_error=False
            )
            metadata = {
                m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
                for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
            }
            if not result.success:
                failed.append((country, result.run_id, _failure_text(result)))
            rows.append((country, result.run_id, result.success, metadata, time.monotonic() - started))
        _print_summary(rows, failed)
        return 0 if not failed else 1


def _failure_text(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip().splitlines()[0]
    return "run failed"


def _print_summary(rows: list, failed: list) -> None:
    header = f"{'country':<8}{'artists':>8}{'404':>6}{'tracks':>8}{'written':>9}{'unchanged':>10}{'deleted':>9}{'seconds':>9}  run"
    print("\n" + header)
    print("-" * len(header))
    for country, run_id, success, metadata, seconds in rows:
        raw = metadata.get("raw_top_tracks", {})
        table = metadata.get("top_tracks", {})
        print(
            f"{country:<8}{raw.get('artists_requested', '-'):>8}{raw.get('artists_not_found_404', '-'):>6}"
            f"{raw.get('tracks', '-'):>8}{table.get('items_written', '-'):>9}{table.get('items_unchanged', '-'):>10}"
            f"{table.get('items_deleted', '-'):>9}{seconds:>9.1f}  {run_id[:8]}{'' if success else '  FAILED'}"
        )
    for country, run_id, message in failed:
        print(f"\n{country} failed (run {run_id}): {message}", file=sys.stderr)
    print(f"\nruns recorded in the Dagster instance at {os.environ['DAGSTER_HOME']}")


def _dev(port: int) -> int:
    with ExitStack() as stack_guard:
        _prepare_environment(stack_guard)
        target = ["-w", "workspace.yaml"] if Path("workspace.yaml").exists() else ["-m", "toptracks_dagster.definitions"]
        command = [sys.executable, "-m", "dagster", "dev", *target, "-h", "127.0.0.1", "-p", str(port)]
        try:
            return subprocess.call(command, env=os.environ.copy())
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
