//! Prometheus metrics through the `metrics` facade, rendered by the side API's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Batch-size buckets around MLflow's sweet spot of 100-500 spans per request.
const BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];

/// Group-commit fsync buckets: a data flush on an SSD is 0.1-1 ms, a journal commit a few ms,
/// a congested or network disk tens of ms.
const FSYNC_BUCKETS: &[f64] = &[0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5];

/// TraceInfos per writer run: 1 (nothing to pipeline) up to the default depth of 16 and past it.
const RUN_CALLS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 32.0, 64.0];

/// MLflow call buckets: StartTraceV3 takes tens of milliseconds on an idle server, a
/// span batch 0.1-1 s; a loaded SQLite server seconds.
const MLFLOW_CALL_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Waits for an ingest turn: a fraction of a millisecond while requests only overlap, up to
/// seconds when clients send more than the gateway can take.
const INGEST_WAIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Histograms with buckets of their own; the others get the exporter's summary default.
const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    ("gateway_export_batch_spans", BATCH_BUCKETS),
    ("gateway_spool_fsync_seconds", FSYNC_BUCKETS),
    ("gateway_mlflow_request_seconds", MLFLOW_CALL_BUCKETS),
    ("gateway_trace_info_run_calls", RUN_CALLS_BUCKETS),
    ("gateway_receiver_ingest_wait_seconds", INGEST_WAIT_BUCKETS),
];

/// Installs the process-wide recorder once and returns its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = HISTOGRAM_BUCKETS
                .iter()
                .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                    b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed (an embedding application's).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "gateway_receiver_spans_received_total",
        "Spans received, by transport."
    );
    describe_counter!(
        "gateway_receiver_spans_accepted_total",
        "Spans accepted into the pipeline, by transport."
    );
    describe_counter!(
        "gateway_receiver_spans_rejected_total",
        "Unusable spans reported in partial_success or 400, by transport and reason."
    );
    describe_counter!(
        "gateway_receiver_spans_refused_total",
        "Spans refused with a retryable code, by transport and reason."
    );
    describe_counter!(
        "gateway_receiver_requests_refused_total",
        "Requests refused before decoding, by transport and reason."
    );
    describe_counter!("gateway_export_spans_total", "Spans delivered to MLflow.");
    describe_counter!(
        "gateway_export_traces_total",
        "TraceInfos written with StartTraceV3."
    );
    describe_counter!(
        "gateway_export_failures_total",
        "Deliveries given up, by kind (spans, trace_info) and reason."
    );
    describe_counter!(
        "gateway_export_spans_failed_total",
        "Spans not delivered, by reason."
    );
    describe_counter!(
        "gateway_export_retries_total",
        "Retried MLflow calls, by kind and reason."
    );
    describe_histogram!(
        "gateway_receiver_ingest_wait_seconds",
        "Time a request waited for an ingest turn (receiver.ingest_concurrency); only waits are counted."
    );
    describe_histogram!("gateway_export_batch_spans", "Spans per /v1/traces batch.");
    describe_histogram!(
        "gateway_mlflow_request_seconds",
        "Duration of each payload call to MLflow (attempts, failed ones too), by kind (spans, trace_info)."
    );
    describe_histogram!(
        "gateway_trace_info_run_calls",
        "TraceInfos a writer takes and sends together (one pipelined run on its own connection)."
    );
    describe_histogram!(
        "gateway_spool_fsync_seconds",
        "Duration of each group commit's fsync (spool.fsync = always)."
    );
    describe_gauge!(
        "gateway_queue_bytes",
        "Encoded span bytes accepted and not yet delivered."
    );
    describe_gauge!(
        "gateway_spool_records",
        "Records (accepted requests per experiment) in the spool, not yet delivered."
    );
    describe_gauge!(
        "gateway_spool_disk_bytes",
        "Bytes of spool segment files on disk."
    );
    describe_counter!(
        "gateway_spool_record_bytes_total",
        "Bytes of records appended to the spool, before compression."
    );
    describe_counter!(
        "gateway_spool_written_bytes_total",
        "Bytes appended to spool segments (frames as stored, compressed or not)."
    );
    describe_gauge!(
        "gateway_spool_oldest_record_age_seconds",
        "Age of the oldest undelivered spool segment's first record."
    );
    describe_counter!(
        "gateway_spool_damaged_regions_total",
        "Damaged stretches of spool files (torn writes, corruption) skipped on start."
    );
    describe_counter!(
        "gateway_spool_damaged_bytes_total",
        "Bytes in damaged spool stretches."
    );
    describe_counter!(
        "gateway_spool_corrupt_records_total",
        "Spool records that failed to read or decode and were skipped."
    );
    describe_counter!(
        "gateway_dead_letters_total",
        "Requests written to the dead-letter file."
    );
    describe_counter!(
        "gateway_dead_letter_spans_total",
        "Spans written to the dead-letter file."
    );
    describe_gauge!(
        "gateway_trace_info_queue",
        "TraceInfo writes waiting for StartTraceV3."
    );
    describe_counter!(
        "gateway_trace_info_dropped_total",
        "TraceInfo writes dropped because their queue was full."
    );
    describe_gauge!(
        "gateway_traces_awaiting_root",
        "Traces whose root span has not arrived."
    );
    describe_counter!(
        "gateway_traces_without_root_total",
        "Traces forgotten without their root (timeout or capacity)."
    );
    describe_counter!(
        "gateway_truncations_total",
        "Values shortened to MLflow's limits, by field."
    );
}
