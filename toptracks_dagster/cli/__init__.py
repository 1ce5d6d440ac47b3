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
from toptracks_dagster.cli.plan import add_plan_command, run_plan_command
from toptracks_dagster.cli.query import add_query_commands, run_query_command
from toptracks_dagster.cli.run import add_run_commands, run_job, run_ui
from toptracks_dagster.cli.stack import add_stack_command, run_stack_command, use_local_stack


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
