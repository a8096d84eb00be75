//! Against a private PostgreSQL server (`scoot_local_cluster::postgres`), one per test.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use scoot_local_cluster::postgres::{Options, PrivateCluster};
use scoot_saga::contract;

use super::*;

pub(crate) fn options(url: String) -> PostgresOptions {
    PostgresOptions {
        url,
        retention: None,
        pool_size: 4,
    }
}

/// A fresh database in `cluster`.
pub(crate) fn database(cluster: &PrivateCluster) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("saga{}", NEXT.fetch_add(1, Ordering::Relaxed));
    cluster.create_database(&name).unwrap();
    cluster.url(&name)
}

fn psql(cluster: &PrivateCluster, url: &str, sql: &str) {
    let status = std::process::Command::new(cluster.bin_dir().join("psql"))
        .args(["-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .status()
        .unwrap();
    assert!(status.success(), "psql {sql}");
}

/// Polls `probe` every 10 ms until it returns `Some`, failing after 30 s.
pub(crate) fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shared_log_behaviour() {
    let cluster = PrivateCluster::start(Options::default()).unwrap();
    contract::check_every(&mut |retention| {
        Box::new(
            PostgresSagaLog::open(&PostgresOptions {
                retention,
                ..options(database(&cluster))
            })
            .unwrap(),
        )
    });
}

#[test]
fn sagas_outlive_the_log_and_the_server() {
    let mut cluster = PrivateCluster::start(Options::default()).unwrap();
    let url = database(&cluster);
    let batch: Vec<SagaMessage> = (0..500)
        .map(|t| SagaMessage::start_task("job", format!("t{t}"), vec![t as u8; 100]))
        .collect();
    {
        let log = PostgresSagaLog::open(&options(url.clone())).unwrap();
        log.start_saga("job", b"definition").unwrap();
        log.log_messages(&batch).unwrap();
    }
    cluster.restart().unwrap();
    let log = PostgresSagaLog::open(&options(url)).unwrap();
    let stored = log.get_messages("job").unwrap().unwrap();
    assert_eq!(stored.len(), 501);
    assert_eq!(
        stored[0],
        SagaMessage::start_saga("job", b"definition".to_vec())
    );
    assert_eq!(&stored[1..], &batch[..]);
    assert_eq!(log.active_sagas().unwrap(), ["job"]);
}

#[test]
fn concurrent_writers_keep_each_sagas_order() {
    let cluster = PrivateCluster::start(Options::default()).unwrap();
    let log = Arc::new(PostgresSagaLog::open(&options(database(&cluster))).unwrap());
    for s in 0..4 {
        log.start_saga(&format!("s{s}"), b"").unwrap();
    }
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let saga = format!("s{}", w % 4);
                    log.log_messages(&[
                        SagaMessage::start_task(&saga, format!("w{w}"), vec![i]),
                        SagaMessage::end_task(&saga, format!("w{w}"), vec![i]),
                    ])
                    .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for s in 0..4 {
        let msgs = log.get_messages(&format!("s{s}")).unwrap().unwrap();
        assert_eq!(msgs.len(), 1 + 2 * 2 * 25);
        // Each writer's messages appear in the order it wrote them, pairs unbroken.
        for w in [s, s + 4] {
            let mine: Vec<&SagaMessage> = msgs
                .iter()
                .filter(|m| m.task_id == format!("w{w}"))
                .collect();
            for (i, pair) in mine.chunks(2).enumerate() {
                assert_eq!(pair[0].kind, MessageKind::StartTask);
                assert_eq!(pair[1].kind, MessageKind::EndTask);
                assert_eq!((pair[0].data[0], pair[1].data[0]), (i as u8, i as u8));
            }
        }
    }
}

#[test]
fn the_schema_is_versioned_and_a_newer_one_refused() {
    let cluster = PrivateCluster::start(Options::default()).unwrap();
    let url = database(&cluster);
    drop(PostgresSagaLog::open(&options(url.clone())).unwrap());
    // Opening again finds it migrated and changes nothing.
    let log = PostgresSagaLog::open(&options(url.clone())).unwrap();
    log.start_saga("kept", b"").unwrap();
    drop(log);
    psql(
        &cluster,
        &url,
        &format!("UPDATE scoot_schema SET version = {}", schema::VERSION + 1),
    );
    let err = PostgresSagaLog::open(&options(url.clone()))
        .err()
        .expect("a newer schema is refused")
        .to_string();
    assert!(err.contains("newer than this scheduler knows"), "{err}");
    psql(
        &cluster,
        &url,
        &format!("UPDATE scoot_schema SET version = {}", schema::VERSION),
    );
    let log = PostgresSagaLog::open(&options(url)).unwrap();
    assert_eq!(log.active_sagas().unwrap(), ["kept"]);
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let err = PostgresSagaLog::open(&options(format!(
        "postgresql://scoot:hunter2@127.0.0.1:{port}/db?connect_timeout=2"
    )))
    .err()
    .expect("nothing listens there")
    .to_string();
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at scoot@127.0.0.1:{port}/db"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A CA, and a server certificate it signed for `names`, in `dir`.
fn pki(dir: &std::path::Path, name: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn tls_as_the_url_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(dir.path(), "db", &["db.test"]);
    let (other_ca, _, _) = pki(dir.path(), "other", &["db.test"]);
    let cluster = PrivateCluster::start(Options {
        tls: Some((cert, key)),
        ..Options::default()
    })
    .unwrap();
    cluster.create_database("tls").unwrap();
    let by_address = cluster.url("tls");
    // The name the certificate is for, reached at the server's address.
    let by_name = format!(
        "{}?hostaddr=127.0.0.1&",
        by_address.replace("127.0.0.1", "db.test")
    );
    let by_address = format!("{by_address}?");
    let open = |url: String| PostgresSagaLog::open(&options(url));
    let ca = ca.to_str().unwrap();
    let other_ca = other_ca.to_str().unwrap();
    for url in [
        format!("{by_name}sslmode=verify-full&sslrootcert={ca}"),
        format!("{by_address}sslmode=verify-ca&sslrootcert={ca}"),
        format!("{by_address}sslmode=require"),
    ] {
        let log = open(url.clone()).unwrap_or_else(|e| panic!("{url}: {e}"));
        log.start_saga("s", b"over TLS").unwrap();
        let ssl: bool = log
            .call(async |client| {
                let row = client
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map_err(db_failed("pg_stat_ssl"))?;
                row.try_get(0).map_err(corrupt)
            })
            .unwrap();
        assert!(ssl, "{url}: the server sees TLS");
    }
    for (url, why) in [
        (
            format!("{by_address}sslmode=verify-full&sslrootcert={ca}"),
            "a certificate for another name",
        ),
        (
            format!("{by_name}sslmode=verify-full&sslrootcert={other_ca}"),
            "a certificate from another CA",
        ),
        (
            format!("{by_address}sslmode=verify-ca&sslrootcert={other_ca}"),
            "a certificate from another CA",
        ),
    ] {
        let err = open(url.clone())
            .err()
            .unwrap_or_else(|| panic!("{url}: {why} accepted"));
        assert!(err.to_string().contains("cannot connect"), "{url}: {err}");
    }

    // A server without TLS, where the URL requires it.
    let plain = PrivateCluster::start(Options::default()).unwrap();
    let err = open(format!("{}?sslmode=require", plain.url("postgres")))
        .err()
        .expect("TLS was required")
        .to_string();
    assert!(err.contains("cannot connect"), "{err}");
}
