"""`toptracks stack start|status|stop|reset`, and finding (or starting) the local stack for the other commands."""

from __future__ import annotations

import os
import sys

from toptracks_dagster import config


def add_stack_command(commands) -> None:
    stack = commands.add_parser("stack", help="the local stack in the background: start, status, stop, reset")
    stack.add_argument("action", choices=["start", "status", "stop", "reset"])


def use_local_stack(out=None) -> None:
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


def run_stack_command(action: str) -> int:
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
