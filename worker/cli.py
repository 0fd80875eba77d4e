"""``vcl-worker``: run the dispatcher or a host worker, enqueue and inspect reservations, run the demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import replace
from typing import Any

from worker.actions import BY_NAME
from worker.cli_call import add_parser as add_call_parser
from worker.config import get_settings, redact_url
from worker.progress_view import wait_with_progress


def cmd_dispatch(args: argparse.Namespace) -> int:
    from worker import wiring as runtime
    from worker.app import app
    from worker.dispatcher import Dispatched, dispatch_once, run_forever

    settings = runtime.settings()
    mn = args.management_node or settings.management_node_id
    logging.getLogger(__name__).info(
        "dispatching for management node %s (db %s)", mn, redact_url(settings.database_url)
    )

    def show(done: list[Dispatched]) -> None:
        for d in done:
            print(
                f"request {d.request_id} reservation {d.reservation_id} [{d.state}] {d.action}"
                f"{' ' + d.task_name + ' on ' + str(d.queue) if d.task_name else ''}"
                f"{' (' + d.reason + ')' if d.reason else ''}",
                flush=True,
            )

    # Resolved once here, for the whole loop: the dispatcher takes what it needs as arguments.
    store, kv = runtime.store(), runtime.lock_redis()
    if args.once:
        show(dispatch_once(store, app, mn, settings=settings, kv=kv))
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        run_forever(store, app, mn, settings=settings, kv=kv, on_pass=show)
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    from worker import wiring as runtime
    from worker.app import app

    options: dict[str, Any] = {}
    if args.queue:
        options["queue"] = args.queue
    task_name = BY_NAME[args.action].task_name
    result = app.send_task(task_name, args=[args.reservation_id], **options)
    runtime.remember_task(args.reservation_id, result.id)
    print(
        f"enqueued {BY_NAME[args.action].task_name} for reservation {args.reservation_id}: task {result.id}"
    )
    if not args.wait:
        return 0
    state, value = wait_with_progress(result, timeout=args.timeout)
    if state == "SUCCESS":
        print(json.dumps(value, indent=2, default=str))
        return 0
    print(f"task {result.id} ended {state}: {value!r}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from celery.result import AsyncResult

    from worker import wiring as runtime
    from worker.app import app

    store = runtime.store()
    found = store.reservation_request(args.reservation_id)
    if found is None:
        print(f"reservation {args.reservation_id} does not exist", file=sys.stderr)
        return 1
    request_id, state, laststate = found
    print(f"reservation {args.reservation_id}: request {request_id} {state}/{laststate}")
    task_id = runtime.task_for_reservation(args.reservation_id)
    if task_id:
        res = AsyncResult(task_id, app=app)
        info = res.info if isinstance(res.info, dict) else (str(res.info) if res.info else "")
        print(f"task {task_id}: {res.state} {json.dumps(info, default=str) if info else ''}")
    else:
        print("task: none recorded")
    for entry in store.loadlog(args.reservation_id):
        print(f"  {entry.timestamp}  {entry.loadstatename:<18} {entry.additionalinfo or ''}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import wiring as runtime
    from worker.app import app, vmhost_queue

    # The host this worker serves: its tasks refuse computers of other hosts (tasks/host_check.py).
    settings = replace(get_settings(), vmhost=args.vmhost)
    runtime.configure(settings=settings)
    argv = [
        "worker",
        "--queues",
        vmhost_queue(args.vmhost),
        "--hostname",
        f"vcl@{args.vmhost}",
        "--concurrency",
        str(args.concurrency or settings.worker_concurrency),
        "--pool",
        "prefork",
        "--events",
        "--loglevel",
        args.loglevel,
    ]
    app.worker_main(argv)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_reap(args: argparse.Namespace) -> int:
    from worker import wiring as runtime
    from worker.reaper import run_reap

    return run_reap(
        runtime.store(), runtime.settings(), runtime.lock_redis(), apply=args.apply, vmhost=args.vmhost
    )


def cmd_check(args: argparse.Namespace) -> int:
    from worker.check import management_node_report, print_report

    if args.management_node:
        return print_report(management_node_report(), "management node")
    from worker.check_host import vmhost_report  # loads libvirt: VM hosts only

    return print_report(vmhost_report(args.vmhost), f"VM host {args.vmhost}")


def cmd_install_units(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worker.install_units import install_units

    for line in install_units(Path(args.prefix), args.executable):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcl-worker", description=__doc__)
    parser.add_argument("--log-level", default=None, help="logging level (default VCL_LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dispatch", help="find due VCL requests, claim them and enqueue their tasks")
    p.add_argument("--once", action="store_true", help="one pass instead of looping")
    p.add_argument(
        "--management-node", type=int, default=None, help="managementnode.id (VCL_MANAGEMENT_NODE_ID)"
    )
    p.set_defaults(func=cmd_dispatch)

    p = sub.add_parser("enqueue", help="enqueue a task for a reservation (the scheduler's direct path)")
    p.add_argument("action", choices=sorted(BY_NAME))
    p.add_argument("reservation_id", type=int)
    p.add_argument("--wait", action="store_true", help="follow progress until the task ends")
    p.add_argument("--queue", default=None, help="override the VM host queue")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("status", help="request state, task state and computerloadlog of a reservation")
    p.add_argument("reservation_id", type=int)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("worker", help="run a Celery worker for one VM host's queue")
    p.add_argument("--vmhost", required=True, help="short host name; consumes queue vmhost.<NAME>")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="the whole VCL cycle on an embedded default (SQLite, in-process broker)")
    p.add_argument("--keep", action="store_true", help="keep the demo's files and network afterwards")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "reap", help="list (or remove with --apply) domains and overlays of no live reservation"
    )
    p.add_argument("--apply", action="store_true", help="remove them (default: only list)")
    p.add_argument("--vmhost", default=None, help="short host name of this VM host (default VCL_VMHOST)")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser("check", help="check this VM host's or management node's setup; one line per problem")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--vmhost", help="short name of the VM host this machine is (as `worker --vmhost`)")
    which.add_argument("--management-node", action="store_true", help="check a management node (no libvirt)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("install-units", help="install the systemd units and the settings' environment file")
    p.add_argument("--prefix", default="/", help="root to install under (default /)")
    p.add_argument("--executable", default=None, help="vcl-worker path for ExecStart (default: this one)")
    p.set_defaults(func=cmd_install_units)
    add_call_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `check` reports invalid settings itself, as one of its problems, and logs only warnings.
    level = args.log_level or ("WARNING" if args.command == "check" else get_settings().log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
