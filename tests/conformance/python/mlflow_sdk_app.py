"""The conversation traced with MLflow's own Python SDK: the seed document's way.

Modes:
- `direct`: straight into MLflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID), the reference the
  gateway's traces are compared with.
- `otlp`: MLflow's SDK sends only OTLP (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set). Its trace-level
  calls (client request id, metadata) do not travel over OTLP, so the app puts its ids on the
  root span as attributes, which MLflow's SDK JSON-encodes like every attribute value.
- `dual`: MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT=true: the SDK writes the trace to MLflow itself
  (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID) and also sends the spans over OTLP.

Over OTLP it runs with an opentelemetry-sdk MLflow 3.17.2 can export with (run.sh makes that
venv). Usage: mlflow_sdk_app.py <direct|otlp|dual> <case-id>
"""

import sys
import time

import mlflow
from mlflow.entities import SpanType


def main() -> None:
    mode, case = sys.argv[1], sys.argv[2]
    for turn in range(1, 4):
        question, answer = f"turn {turn}", f"Processed message: 'turn {turn}'"
        with mlflow.start_span("POST /chat") as root:
            root.set_inputs(question)
            ids = {
                "client_request_id": f"{case}-req-{turn}",
                "session.id": f"{case}-session",
                "user.id": f"{case}-user",
            }
            if mode == "otlp":
                root.set_attributes(ids)
            mlflow.update_current_trace(
                client_request_id=ids["client_request_id"],
                metadata={
                    "mlflow.trace.session": ids["session.id"],
                    "mlflow.trace.user": ids["user.id"],
                    "mlflow.source.type": "conformance",
                    "environment": "conformance",
                    "app_version": "2.0.0",
                    "deployment_id": "chat-deploy",
                    "region": "us-east-1",
                },
                tags={"team": "conformance"},
            )
            with mlflow.start_span("chat gpt-4o-mini", span_type=SpanType.CHAT_MODEL) as llm:
                llm.set_inputs([{"role": "user", "content": question}])
                llm.set_attribute("mlflow.llm.model", "gpt-4o-mini")
                llm.set_attribute("mlflow.llm.provider", "openai")
                llm.set_attribute(
                    "mlflow.chat.tokenUsage",
                    {"input_tokens": 42 + turn, "output_tokens": 7 + turn, "total_tokens": 49 + 2 * turn},
                )
                llm.set_outputs([{"role": "assistant", "content": answer}])
                time.sleep(0.01)
            root.set_outputs(answer)
    mlflow.flush_trace_async_logging()
    # The OTLP exporter's batch processor flushes at exit.


if __name__ == "__main__":
    main()
