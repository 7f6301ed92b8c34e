"""Runs a real MLflow tracking server for the test suite and takes it down with the test.

Usage: mlflow_server.py <mlflow-executable> <port> <state-dir> [<backend-store-uri> [<workers>]]

The tests use the defaults (SQLite in the state dir, 1 worker); the benchmarks pass PostgreSQL
and MLflow's default worker count.

The server runs in this process's own process group. When the parent (the Rust test binary)
closes our stdin -- by exiting, crashing or dropping the handle -- the whole group is killed, so
no uvicorn worker outlives the test run. With GATEWAY_TEST_REMOVE_STATE=1 the state dir goes
with it (a throwaway dir the parent cannot remove itself: its handle lives until exit).
"""

import os
import signal
import subprocess
import sys
import threading
import time


def main() -> int:
    mlflow, port, state = sys.argv[1], sys.argv[2], sys.argv[3]
    backend = sys.argv[4] if len(sys.argv) > 4 else f"sqlite:///{state}/mlflow.db"
    workers = sys.argv[5] if len(sys.argv) > 5 else "1"
    os.setpgrp()
    os.makedirs(os.path.join(state, "artifacts"), exist_ok=True)
    env = dict(os.environ)
    # The job runner's 7 huey consumers are not needed for tracing and cost ~1.7 GB of RSS.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = subprocess.Popen(
        [
            mlflow, "server",
            "--backend-store-uri", backend,
            "--default-artifact-root", os.path.join(state, "artifacts"),
            "--host", "127.0.0.1",
            "--port", port,
            "--workers", workers,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
    )

    def stop(*_args):
        if os.environ.get("GATEWAY_TEST_REMOVE_STATE") == "1":
            # In a session of its own, so the group kill below does not take it along; it
            # waits for the server's processes to be gone.
            subprocess.Popen(
                ["sh", "-c", 'sleep 3; rm -rf -- "$0"', state],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            os.killpg(0, signal.SIGTERM)
            time.sleep(1.5)
        finally:
            os.killpg(0, signal.SIGKILL)

    def watch_parent():
        sys.stdin.buffer.read()  # returns at EOF: the parent is gone or wants us gone
        stop()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=watch_parent, daemon=True).start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
