"""What the conformance cases share: waiting for MLflow, and an app's OpenTelemetry environment."""

import os
import time


def wait_for(what, fn, timeout=90):
    started = time.time()
    last = None
    while time.time() - started < timeout:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the trace may not be searchable yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: gave up after {timeout}s (last: {last!r})")


def app_env(service, exp_id, extra, token=None):
    # The standard header list, values percent-encoded as the OTLP exporter specification asks.
    headers = f"x-mlflow-experiment-id={exp_id}"
    if token:
        headers += f",authorization=Bearer%20{token}"
    env = dict(os.environ)
    env.update(extra)
    env.update({
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": (
            "deployment.environment.name=conformance,service.version=2.0.0,"
            "k8s.deployment.name=chat-deploy,cloud.region=us-east-1"
        ),
        # The same header MLflow's own OTLP endpoint takes: routes to this run's experiment.
        "OTEL_EXPORTER_OTLP_HEADERS": headers,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    })
    return env
