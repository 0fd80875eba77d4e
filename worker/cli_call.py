"""``vcl-worker call <method> <reservation id> [args] [--wait] [--json] [--timeout S]``.

The management node's side of delegated mode: vcld's provisioning module
(integrations/vcld/lib/VCL/Module/Provisioning/vcl_worker.pm) runs this for every call it delegates.
The task goes to the queue of the reservation's VM host (from the VCL database); the command waits
for the result and prints ONE JSON object (``--json``) or the bare result, exit status 0 when the call
succeeded, 1 otherwise (failure, timeout, broker or database unreachable).

The call cannot act after the command gave up: it is sent with Celery's ``expires`` and a
``deadline`` (both: now + the timeout), a worker answers ``expired`` without acting when it would
start (or get the computer's lock) after that, and on timeout the command revokes the task.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from worker.delegated.methods import BY_METHOD, TASK_NAME, call_timeout
from worker.timing import Stopwatch


def add_parser(sub: Any) -> None:
    """Register ``call`` on ``vcl-worker``'s subcommands."""
    p = sub.add_parser(
        "call",
        help="run one provisioning call for vcld on the reservation's VM host (delegated mode)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", choices=sorted(BY_METHOD))
    p.add_argument("reservation_id", type=int)
    p.add_argument("args", nargs="*", help="extra arguments (an image name for does_image_exist etc.)")
    p.add_argument("--wait", action="store_true", help="wait for the result (else print the task id)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait (default per method, VCL_CALL_TIMEOUT_<METHOD>; load 3600, capture 7800)",
    )
    p.add_argument("--queue", default=None, help="override the VM host queue")
    p.set_defaults(func=cmd_call)


def _emit(out: dict[str, Any], *, as_json: bool) -> int:
    ok = bool(out.get("ok"))
    if as_json:
        print(json.dumps(out, default=str), flush=True)
    else:
        print("" if out.get("result") is None else out["result"], flush=True)
        if not ok:
            print(f"{out.get('method')} failed: {out.get('error')}", file=sys.stderr)
    return 0 if ok else 1


def _route(reservation_id: int) -> str | None:
    from worker import wiring as runtime
    from worker.app import vmhost_queue

    host = runtime.vmhost_for_reservation(reservation_id)
    return None if host is None else vmhost_queue(host)


def _revoke(result: Any) -> bool:
    try:
        result.revoke()
    except Exception:  # the broker is gone too: the task's own deadline still holds
        return False
    return True


def _failed(base: dict[str, Any], error: str) -> dict[str, Any]:
    return {**base, "ok": False, "result": None, "error": error}


def cmd_call(args: argparse.Namespace) -> int:
    base: dict[str, Any] = {"method": args.method, "reservation_id": args.reservation_id}
    stopwatch = Stopwatch()
    try:
        timeout = args.timeout or call_timeout(args.method)
        queue = args.queue or _route(args.reservation_id)
        if queue is None:
            return _emit(_failed(base, "reservation or its VM host not found"), as_json=args.json)
        from celery.exceptions import TimeoutError as CeleryTimeout

        from worker.app import app

        task_args = [args.method, args.reservation_id, list(args.args)]
        # Without --wait nobody waits, but the call still expires after the method's timeout.
        deadline = time.time() + timeout
        result = app.send_task(
            TASK_NAME, args=task_args, kwargs={"deadline": deadline}, queue=queue, expires=timeout
        )
        base.update(task_id=result.id, queue=queue)
        if not args.wait:
            return _emit({**base, "ok": True, "result": None, "detail": "sent"}, as_json=args.json)
        try:
            value = result.get(timeout=timeout, propagate=False, interval=0.2)
        except CeleryTimeout:
            # vcld treats this call as failed: nobody waits for it any more. Revoked (a worker drops
            # it unstarted); one already running answers "expired" at its next deadline check.
            revoked = _revoke(result)
            return _emit(
                {**_failed(base, f"no result within {timeout:g} s"), "revoked": revoked}, as_json=args.json
            )
    except Exception as exc:  # broker, backend or database unreachable: still one JSON answer
        return _emit(_failed(base, f"{type(exc).__name__}: {exc}"), as_json=args.json)
    base["seconds"] = stopwatch.elapsed()
    if result.successful() and isinstance(value, dict):
        return _emit({**value, **base}, as_json=args.json)
    return _emit(_failed(base, f"task {result.state}: {value!r}"), as_json=args.json)


__all__ = ["add_parser", "cmd_call"]
