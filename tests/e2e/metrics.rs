//! Every server's metrics after real work: Scoot's `/admin/metrics.json` with Scoot's names and
//! the right counts, and `/metrics` read by Prometheus's own Python parser.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use scoot_cas_client::CasClient;
use serde_json::Value;

use crate::security::run_action;
use crate::support::*;

fn scoot_json(port: u16) -> Value {
    let response = http_get(port, "/admin/metrics.json", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).expect("/admin/metrics.json is JSON")
}

/// `/metrics` parsed by `prometheus_client`'s OpenMetrics parser: sample (`name{labels}`) →
/// value. The parser refuses anything that is not valid exposition text.
fn prometheus(port: u16) -> BTreeMap<String, f64> {
    let response = http_get(port, "/metrics", &[]);
    assert_eq!(response.status, 200, "{}", response.text());
    const PARSE: &str = "import json, sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        out = {}\n\
        for family in parse(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out[s.name + ('{' + labels + '}' if labels else '')] = s.value\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&response.body)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client refused /metrics: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        response.text()
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn every_server_counts_a_job_an_action_and_a_bundle_check() {
    let scheduler = Scheduler::start(&[], serde_json::json!({}));
    let grpc = format!("127.0.0.1:{}", scheduler.grpc_port);
    let worker = Worker::start(&["-cas_addr", &grpc]);
    write_workers(&scheduler.workers_file, &[&worker]);
    let api = ApiServer::start();

    let mut client = scheduler.client();
    let job_id = {
        use scoot_thrift::scoot::TCloudScootSyncClient;
        let def = job(vec![
            task("ok", &["true"]),
            task("exits-3", &["sh", "-c", "exit 3"]),
        ]);
        client.0.run_job(def).unwrap().id
    };
    wait_job(&mut client, &job_id);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cas = CasClient::connect(&grpc, "").await.unwrap();
        let out = run_action(&cas, "echo measured > out.txt").await.unwrap();
        assert_eq!(&out[..], b"measured\n");
        let unknown = scoot_cas_client::digest_of(b"an action nobody ran");
        assert_eq!(cas.get_action_result(&unknown).await.unwrap(), None);
    });
    let bundle = "bs-0123456789abcdef0123456789abcdef01234567.bundle";
    let response = http_request(
        api.http_port,
        "HEAD",
        &format!("/bundle/{bundle}"),
        &[],
        b"",
        0,
    );
    assert_eq!(response.status, 404);

    // Scoot's names, with counts.
    let sched = scoot_json(scheduler.http_port);
    assert_eq!(
        sched["scheduler/schedJobsCounter"], 2,
        "a job and an action"
    );
    assert_eq!(sched["scheduler/completedTaskCounter"], 3);
    assert_eq!(sched["scheduler/scheduledTasksCounter"], 3);
    assert_eq!(
        sched["scheduler/failedTaskCounter"], 0,
        "exit 3 is a completed task"
    );
    for name in [
        "scheduler/runJobLatency_ms.p99",
        "scheduler/schedJobLatency_ms.count",
        "scheduler/sagaUpdateStateLatency_ms.avg",
        "scheduler/schedNumRunningTasksGauge",
        "scheduler/schedNumWaitingTasksGauge",
    ] {
        assert!(sched.get(name).is_some(), "{name} missing: {sched}");
    }
    let pretty = http_get(scheduler.http_port, "/admin/metrics.json?pretty=true", &[]).text();
    assert!(
        pretty.contains("\n  \"scheduler/schedJobsCounter\": 2"),
        "{pretty}"
    );
    let work = scoot_json(worker.http_port);
    assert_eq!(work["workerserver/handler/runs"], 3);
    assert_eq!(work["workerserver/runningTask"], 0);
    assert!(
        work.get("workerserver/workerTaskLatency_ms.p50").is_some(),
        "{work}"
    );
    let apiserver = scoot_json(api.http_port);
    assert_eq!(apiserver["apiserver/bundlestoreServer/checkCounter"], 1);
    assert_eq!(apiserver["apiserver/bundlestoreServer/checkOkCounter"], 1);

    // The same facts, and REAPI's, for Prometheus.
    let sched = prometheus(scheduler.http_port);
    let value = |m: &BTreeMap<String, f64>, name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing from {:#?}", m.keys().collect::<Vec<_>>()))
    };
    assert_eq!(value(&sched, "scoot_scheduler_jobs_total"), 2.0);
    assert_eq!(value(&sched, "scoot_scheduler_tasks_completed_total"), 3.0);
    assert_eq!(
        value(&sched, "scoot_reapi_execute_requests_total{outcome=queued}"),
        1.0
    );
    assert_eq!(
        value(
            &sched,
            "scoot_reapi_action_phase_seconds_count{phase=execution}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &sched,
            "scoot_reapi_action_phase_seconds_count{phase=queued}"
        ),
        1.0,
        "the time queued is a phase too"
    );
    assert_eq!(
        value(
            &sched,
            "scoot_reapi_action_cache_lookups_total{result=miss}"
        ),
        1.0
    );
    assert!(value(&sched, "scoot_cas_bytes_total{direction=in}") > 0.0);
    assert_eq!(value(&sched, "scoot_reapi_queued_actions"), 0.0);
    assert!(value(&sched, "scoot_saga_write_duration_seconds_count") > 0.0);
    let work = prometheus(worker.http_port);
    assert_eq!(value(&work, "scoot_worker_runs_total"), 3.0);
    assert_eq!(
        value(&work, "scoot_worker_task_duration_seconds_count"),
        3.0
    );
    let apiserver = prometheus(api.http_port);
    assert_eq!(value(&apiserver, "scoot_bundlestore_exists_total"), 1.0);

    // `/` answers as Scoot's servers did.
    let root = http_get(worker.http_port, "/", &[]);
    assert_eq!(root.status, 501);
    assert!(
        root.text().contains("/admin/metrics.json"),
        "{}",
        root.text()
    );
}

/// `-log_format json`: every line of the scheduler's log is a JSON object, and the lines about
/// a REAPI action carry its operation and action digest, and those about its task the same
/// name as job id, so one action can be followed through the log.
#[test]
fn json_logs_follow_an_action_from_execute_to_its_task() {
    let scheduler =
        Scheduler::start_with_flags(&[], serde_json::json!({}), &["-log_format", "json"]);
    let grpc = format!("127.0.0.1:{}", scheduler.grpc_port);
    let worker = Worker::start(&["-cas_addr", &grpc]);
    write_workers(&scheduler.workers_file, &[&worker]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let cas = CasClient::connect(&grpc, "").await.unwrap();
        run_action(&cas, "echo followed > out.txt").await.unwrap();
    });
    let log = repo_root().join(format!(
        "target/e2e-logs/scheduler-{}.log",
        scheduler.thrift_port
    ));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let operation = lines
        .iter()
        .find_map(|l| l["span"]["operation"].as_str().map(str::to_string))
        .expect("no line in the execute span names its operation");
    assert!(
        lines.iter().any(|l| l["span"]["action"]
            .as_str()
            .is_some_and(|a| a.contains('/'))),
        "no line names the action digest"
    );
    let task_lines = lines
        .iter()
        .filter(|l| {
            l["fields"]["job_id"] == operation.as_str()
                || l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["job_id"] == operation.as_str()))
        })
        .count();
    assert!(
        task_lines >= 3,
        "the job {operation} is not followed: {task_lines} lines"
    );
}
