//! Prometheus metrics of the cache services (served by both the scheduler and the apiserver).

use std::sync::LazyLock;

use scoot_metrics::{Counter, CounterFamily, counter, counter_family};

pub(crate) static CAS_BYTES: LazyLock<CounterFamily> = LazyLock::new(|| {
    counter_family(
        "scoot_cas_bytes",
        "Blob bytes received (in) and sent (out) by the CAS and ByteStream services.",
        "direction",
    )
});
pub(crate) static FIND_MISSING_REQUESTED: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        None,
        Some((
            "scoot_cas_find_missing_requested",
            "Digests asked about in FindMissingBlobs.",
        )),
    )
});
pub(crate) static FIND_MISSING_MISSING: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        None,
        Some((
            "scoot_cas_find_missing_missing",
            "Digests FindMissingBlobs reported missing.",
        )),
    )
});
pub(crate) static AC_LOOKUPS: LazyLock<CounterFamily> = LazyLock::new(|| {
    counter_family(
        "scoot_reapi_action_cache_lookups",
        "Action cache lookups (GetActionResult and Execute's own) by result.",
        "result",
    )
});

/// Lists the metrics before anything happens.
pub fn register() {
    FIND_MISSING_REQUESTED.add(0);
    FIND_MISSING_MISSING.add(0);
    for direction in ["in", "out"] {
        CAS_BYTES.add(direction, 0);
    }
    for result in ["hit", "miss"] {
        AC_LOOKUPS.add(result, 0);
    }
}
