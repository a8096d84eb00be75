//! The apiserver's metrics: Scoot's bundlestore server names (scope
//! `apiserver/bundlestoreServer/`) and Prometheus names. See `scoot_metrics`.

use std::sync::LazyLock;

use scoot_metrics::{Counter, Latency, counter, latency};

macro_rules! scoot_counter {
    ($name:ident, $scoot:literal) => {
        pub static $name: LazyLock<Counter> =
            LazyLock::new(|| counter(Some(concat!("apiserver/bundlestoreServer/", $scoot)), None));
    };
}

pub static UPLOADS: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        Some("apiserver/bundlestoreServer/uploadCounter"),
        Some(("scoot_bundlestore_writes", "Bundle uploads (POST).")),
    )
});
pub static DOWNLOADS: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        Some("apiserver/bundlestoreServer/downloadCounter"),
        Some(("scoot_bundlestore_reads", "Bundle downloads (GET).")),
    )
});
pub static CHECKS: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        Some("apiserver/bundlestoreServer/checkCounter"),
        Some((
            "scoot_bundlestore_exists",
            "Bundle existence checks (HEAD).",
        )),
    )
});
scoot_counter!(UPLOADS_OK, "uploadOkCounter");
scoot_counter!(DOWNLOADS_OK, "downloadOkCounter");
scoot_counter!(CHECKS_OK, "checkOkCounter");
scoot_counter!(SERVE_REQUESTS, "serveRequestCounter");
scoot_counter!(SERVE_OK, "serveOkCounter");
pub static UPLOAD_LATENCY: LazyLock<Latency> =
    LazyLock::new(|| latency(Some("apiserver/bundlestoreServer/uploadLatency_ms"), None));
pub static CHECK_LATENCY: LazyLock<Latency> =
    LazyLock::new(|| latency(Some("apiserver/bundlestoreServer/checkLatency_ms"), None));
pub static DOWNLOAD_LATENCY: LazyLock<Latency> = LazyLock::new(|| {
    latency(
        Some("apiserver/bundlestoreServer/downloadLatency_ms"),
        Some((
            "scoot_bundlestore_read_duration_seconds",
            "How long bundle downloads took to answer.",
        )),
    )
});

/// Lists every metric (with zero values) before anything happens, and starts the latch.
pub fn register() {
    for c in [
        &*UPLOADS,
        &*DOWNLOADS,
        &*CHECKS,
        &*UPLOADS_OK,
        &*DOWNLOADS_OK,
        &*CHECKS_OK,
        &*SERVE_REQUESTS,
        &*SERVE_OK,
    ] {
        c.add(0);
    }
    for l in [&UPLOAD_LATENCY, &CHECK_LATENCY, &DOWNLOAD_LATENCY] {
        LazyLock::force(l);
    }
    scoot_cas_services::stats::register();
    scoot_metrics::start_latching();
}
