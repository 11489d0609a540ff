//! Metric names (constants, so dashboards and docs can rely on them) and the Prometheus endpoint.
//!
//! Labels are fixed per metric and listed beside each name; label values come from small closed sets
//! (topic names from config, reason categories from [`crate::schema::DecodeError::category`]).

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::{Error, Result};

/// Counter, labels: topic. Records read from a source.
pub const RECORDS_CONSUMED: &str = "sailstream_records_consumed_total";
/// Counter, labels: topic. Records whose effect was committed to the store.
pub const RECORDS_APPLIED: &str = "sailstream_records_applied_total";
/// Counter, labels: topic. Records skipped because their offset was already applied (redelivery after a crash).
pub const RECORDS_DUPLICATE: &str = "sailstream_records_duplicate_total";
/// Counter, labels: topic, category (malformed | oversized | invalid).
pub const RECORDS_DEAD_LETTERED: &str = "sailstream_records_dead_lettered_total";
/// Counter, no labels. Item or ID-embedding updates ignored because a newer version is stored.
pub const ITEMS_STALE: &str = "sailstream_items_stale_total";
/// Histogram, no labels. Records per committed store batch.
pub const STORE_BATCH_RECORDS: &str = "sailstream_store_batch_records";
/// Histogram, no labels. Seconds to commit one store batch.
pub const STORE_COMMIT_SECONDS: &str = "sailstream_store_commit_seconds";
/// Counter, no labels. Offline-log segments written.
pub const LOG_SEGMENTS: &str = "sailstream_offline_log_segments_total";
/// Counter, no labels. Events written into offline-log segments.
pub const LOG_ROWS: &str = "sailstream_offline_log_rows_total";
/// Counter, labels: stage (apply). Batches retried after an external failure (broker, disk).
pub const RETRIES: &str = "sailstream_retries_total";
/// Gauge, labels: topic, partition. Messages behind the partition's high watermark (librdkafka statistics).
pub const CONSUMER_LAG: &str = "sailstream_kafka_consumer_lag";
/// Counter, no labels. Errors reported by the Kafka client (broker unreachable, ...); it keeps retrying.
pub const KAFKA_ERRORS: &str = "sailstream_kafka_errors_total";
/// Counter, labels: kind (assign | revoke). Kafka consumer-group rebalances seen.
pub const KAFKA_REBALANCES: &str = "sailstream_kafka_rebalances_total";
/// Gauge, labels: device (cuda | cpu). 1 for the device the embed stage's ONNX session runs on.
pub const EMBED_DEVICE: &str = "sailstream_embed_device";
/// Counter, labels: model. Items embedded and stored.
pub const ITEMS_EMBEDDED: &str = "sailstream_items_embedded_total";
/// Counter, labels: reason (no_modality | preprocess_error). Items that could not be embedded at all.
pub const ITEMS_NOT_EMBEDDABLE: &str = "sailstream_items_not_embeddable_total";
/// Counter, labels: modality (image | audio), reason (too_large | unreadable | undecodable). Media left out of an
/// item's embedding.
pub const MEDIA_DROPPED: &str = "sailstream_embed_media_dropped_total";
/// Histogram, labels: none. Items per inference batch.
pub const EMBED_BATCH_ITEMS: &str = "sailstream_embed_batch_items";
/// Histogram, labels: none. Seconds per inference call (ONNX Runtime only).
pub const EMBED_INFERENCE_SECONDS: &str = "sailstream_embed_inference_seconds";
/// Histogram, labels: none. Seconds to fetch and preprocess one batch's media and text.
pub const EMBED_PREPROCESS_SECONDS: &str = "sailstream_embed_preprocess_seconds";
/// Counter, labels: topic. Item embeddings published.
pub const EMBEDDINGS_PUBLISHED: &str = "sailstream_embeddings_published_total";
/// Counter, labels: job, outcome (ok | error). Scheduled job runs in the worker.
pub const JOB_RUNS: &str = "sailstream_job_runs_total";
/// Histogram, labels: job. Seconds one job run took.
pub const JOB_SECONDS: &str = "sailstream_job_seconds";
/// Counter, no labels. Users whose interests the stream recomputed.
pub const INTERESTS_UPDATED: &str = "sailstream_interests_updated_total";

/// Counter, labels: route, status. Lookup API requests answered; route is the matched route template (such as
/// `/v1/match`) or `unmatched`, status the HTTP code.
pub const SERVE_REQUESTS: &str = "sailstream_serve_requests_total";
/// Histogram, labels: route. Seconds from request to response, as the server sees it.
pub const SERVE_SECONDS: &str = "sailstream_serve_request_seconds";
/// Counter, labels: outcome (ok | error). Catch-ups of the lookup server's secondary store with the writer.
pub const SERVE_CATCH_UPS: &str = "sailstream_serve_catch_ups_total";
/// Gauge, no labels. Seconds since the lookup server's view of the store last caught up with the writer.
pub const SERVE_STALENESS: &str = "sailstream_serve_staleness_seconds";
/// Counter, labels: outcome (hit | miss). Items match features found decoded in the lookup server's item cache
/// (stamp unchanged) or read from the store.
pub const SERVE_ITEM_CACHE: &str = "sailstream_serve_item_cache_total";

/// Starts the Prometheus scrape endpoint (`GET /metrics` on `addr`) and installs the global recorder. Returns a
/// handle that renders the same metrics (the lookup API serves them on its own port too). Must be called
/// inside a Tokio runtime.
pub fn install_prometheus(addr: SocketAddr) -> Result<PrometheusHandle> {
    let fail = |e: &dyn std::fmt::Display| {
        Error::Metrics(format!("starting Prometheus endpoint on {addr}: {e}"))
    };
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .build()
        .map_err(|e| fail(&e))?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| fail(&e))?;
    tokio::spawn(exporter);
    describe();
    tracing::info!(%addr, "Prometheus metrics endpoint listening");
    Ok(handle)
}

/// Installs the global recorder without a listener of its own: the caller serves [`PrometheusHandle::render`].
/// Must be called inside a Tokio runtime (it spawns the recorder's upkeep).
pub fn install_recorder() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Error::Metrics(format!("installing the metrics recorder: {e}")))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(RECORDS_CONSUMED, "Records read from a source");
    describe_counter!(
        RECORDS_APPLIED,
        "Records whose effect was committed to the store"
    );
    describe_counter!(RECORDS_DUPLICATE, "Records skipped as already applied");
    describe_counter!(
        RECORDS_DEAD_LETTERED,
        "Records sent to the dead-letter topic"
    );
    describe_counter!(ITEMS_STALE, "Item updates older than the stored version");
    describe_histogram!(STORE_BATCH_RECORDS, "Records per committed store batch");
    describe_histogram!(STORE_COMMIT_SECONDS, "Seconds to commit one store batch");
    describe_counter!(KAFKA_REBALANCES, "Kafka consumer-group rebalances");
    describe_counter!(LOG_SEGMENTS, "Offline-log segments written");
    describe_counter!(LOG_ROWS, "Events written into offline-log segments");
    describe_counter!(KAFKA_ERRORS, "Errors reported by the Kafka client");
    describe_counter!(RETRIES, "Batches retried after an external failure");
    metrics::describe_gauge!(EMBED_DEVICE, "1 for the device the embed stage runs on");
    describe_counter!(ITEMS_EMBEDDED, "Items embedded and stored");
    describe_counter!(ITEMS_NOT_EMBEDDABLE, "Items with nothing left to embed");
    describe_counter!(
        MEDIA_DROPPED,
        "Pictures and sounds left out of an embedding"
    );
    describe_histogram!(EMBED_BATCH_ITEMS, "Items per inference batch");
    describe_histogram!(EMBED_INFERENCE_SECONDS, "Seconds per inference call");
    describe_histogram!(EMBED_PREPROCESS_SECONDS, "Seconds to preprocess one batch");
    describe_counter!(EMBEDDINGS_PUBLISHED, "Item embeddings published");
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the high watermark per partition"
    );
    describe_counter!(JOB_RUNS, "Scheduled job runs in the worker, by outcome");
    describe_histogram!(JOB_SECONDS, "Seconds one job run took");
    describe_counter!(
        INTERESTS_UPDATED,
        "Users whose interests the stream recomputed"
    );
    describe_counter!(
        SERVE_REQUESTS,
        "Lookup API requests answered, by route and status"
    );
    describe_histogram!(SERVE_SECONDS, "Seconds to answer one lookup API request");
    describe_counter!(
        SERVE_CATCH_UPS,
        "Catch-ups of the lookup server's store view"
    );
    metrics::describe_gauge!(
        SERVE_STALENESS,
        "Seconds since the lookup server's store view caught up"
    );
    describe_counter!(
        SERVE_ITEM_CACHE,
        "Items read by match features, by cache outcome (hit or miss)"
    );
}
