//! Cluster membership: which workers exist. A [`Fetcher`] lists node ids (worker thrift
//! addresses); [`watch`] polls it and reports additions and removals to the scheduler.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

/// A change in the set of listed workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    Added(String),
    Removed(String),
}

pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self) -> Result<Vec<String>, String>;
}

/// Scoot's local discovery: every `workerserver` process on this machine, identified by its
/// `-thrift_addr` flag (`-flag value`, `-flag=value`, with one or two dashes).
pub struct LocalProcessFetcher;

impl Fetcher for LocalProcessFetcher {
    fn fetch(&self) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
        let mut nodes = Vec::new();
        for entry in entries.flatten() {
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if let Some(addr) = worker_thrift_addr(&argv) {
                nodes.push(addr);
            }
        }
        Ok(nodes)
    }
}

fn worker_thrift_addr(argv: &[String]) -> Option<String> {
    let program = argv.first()?;
    if program.rsplit('/').next() != Some("workerserver") {
        return None;
    }
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        let flag = arg.trim_start_matches('-');
        if arg.starts_with('-') {
            if let Some(value) = flag.strip_prefix("thrift_addr=") {
                return Some(value.to_string());
            }
            if flag == "thrift_addr" {
                return args.next().cloned();
            }
        }
    }
    // The worker's own default.
    Some("localhost:9092".to_string())
}

/// Workers listed in a file, one `host:port` per line (`#` starts a comment). For clusters that
/// span machines; the file may be rewritten at any time.
pub struct StaticFileFetcher(pub PathBuf);

impl Fetcher for StaticFileFetcher {
    fn fetch(&self) -> Result<Vec<String>, String> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("cannot read worker list {}: {e}", self.0.display()))?;
        let mut nodes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let valid = line
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(format!(
                    "{} line {}: {line:?} is not host:port",
                    self.0.display(),
                    n + 1
                ));
            }
            nodes.push(line.to_string());
        }
        Ok(nodes)
    }
}

/// Workers behind a DNS name: every A and AAAA record is a worker listening on `port` (a
/// Kubernetes headless Service lists each ready pod so). A name that does not resolve is a
/// failed fetch, which changes nothing: a resolver hiccup must not drain the cluster; workers
/// that are really gone are found lost by their failed calls.
pub struct DnsFetcher {
    pub name: String,
    pub port: u16,
}

impl Fetcher for DnsFetcher {
    fn fetch(&self) -> Result<Vec<String>, String> {
        use std::net::ToSocketAddrs;
        let addrs = (self.name.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.name))?;
        let nodes: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
        Ok(nodes.into_iter().collect())
    }
}

/// Polls `fetcher` every `period` and sends the differences (additions first, sorted). A failed
/// fetch changes nothing; it is logged once until fetching works again.
pub async fn watch(
    fetcher: Box<dyn Fetcher>,
    period: Duration,
    updates: mpsc::Sender<Vec<Membership>>,
) {
    let fetcher: std::sync::Arc<dyn Fetcher> = fetcher.into();
    let mut known = BTreeSet::new();
    let mut failing = false;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let f = fetcher.clone();
        let fetched = tokio::task::spawn_blocking(move || f.fetch())
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let listed: BTreeSet<String> = match fetched {
            Ok(nodes) => {
                failing = false;
                nodes.into_iter().collect()
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot fetch the worker list");
                }
                failing = true;
                continue;
            }
        };
        let mut changes: Vec<Membership> = listed
            .difference(&known)
            .map(|n| Membership::Added(n.clone()))
            .collect();
        changes.extend(
            known
                .difference(&listed)
                .map(|n| Membership::Removed(n.clone())),
        );
        if !changes.is_empty() {
            known = listed;
            if updates.send(changes).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn finds_the_thrift_addr_of_workerservers() {
        let cases = [
            (
                "/bin/workerserver -thrift_addr localhost:10101 -http_addr x",
                Some("localhost:10101"),
            ),
            (
                "workerserver --thrift_addr=127.0.0.1:5",
                Some("127.0.0.1:5"),
            ),
            ("workerserver -log_level debug", Some("localhost:9092")),
            ("/usr/bin/scheduler -thrift_addr localhost:9090", None),
            ("vim workerserver -thrift_addr y", None),
        ];
        for (cmd, want) in cases {
            assert_eq!(worker_thrift_addr(&argv(cmd)).as_deref(), want, "{cmd}");
        }
    }

    #[test]
    fn dns_lists_every_address_of_the_name() {
        let nodes = DnsFetcher {
            name: "localhost".into(),
            port: 9092,
        }
        .fetch()
        .unwrap();
        assert!(nodes.contains(&"127.0.0.1:9092".to_string()), "{nodes:?}");
        let literal = DnsFetcher {
            name: "::1".into(),
            port: 7,
        }
        .fetch()
        .unwrap();
        assert_eq!(literal, vec!["[::1]:7"]);
        let error = DnsFetcher {
            name: "no-such-host.invalid".into(),
            port: 1,
        }
        .fetch()
        .unwrap_err();
        assert!(error.contains("no-such-host.invalid"), "{error}");
    }

    #[test]
    fn static_file_lists_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers");
        std::fs::write(
            &path,
            "# workers\nhost-a:10101\n\n  10.1.2.3:9092  # rack 2\n",
        )
        .unwrap();
        let fetcher = StaticFileFetcher(path.clone());
        assert_eq!(
            fetcher.fetch().unwrap(),
            vec!["host-a:10101", "10.1.2.3:9092"]
        );
        std::fs::write(&path, "host-a\n").unwrap();
        assert!(fetcher.fetch().unwrap_err().contains("line 1"));
        assert!(
            StaticFileFetcher(dir.path().join("missing"))
                .fetch()
                .is_err()
        );
    }

    #[tokio::test]
    async fn watch_reports_differences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers");
        std::fs::write(&path, "a:1\nb:2\n").unwrap();
        let (tx, mut rx) = mpsc::channel(10);
        let watcher = tokio::spawn(watch(
            Box::new(StaticFileFetcher(path.clone())),
            Duration::from_millis(10),
            tx,
        ));
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first,
            vec![
                Membership::Added("a:1".into()),
                Membership::Added("b:2".into())
            ]
        );
        std::fs::write(&path, "b:2\nc:3\n").unwrap();
        let second = rx.recv().await.unwrap();
        assert_eq!(
            second,
            vec![
                Membership::Added("c:3".into()),
                Membership::Removed("a:1".into())
            ]
        );
        watcher.abort();
    }
}
