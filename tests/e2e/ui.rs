//! The scheduler's web pages in a real browser: a scheduler and a worker with a finished job,
//! a running one whose tag is a script, and a remote execution; headless Chromium loads the
//! jobs, job, workers and operations pages, runs their scripts (the 2 s refresh included) and
//! hands back the DOM, and takes the screenshots kept in `target/ui-screenshots/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scoot_cas_client::CasClient;
use scoot_proto::longrunning::ListOperationsRequest;
use scoot_proto::longrunning::operations_client::OperationsClient;
use scoot_thrift::scoot::{TCloudScootSyncClient, TaskDefinition};

use crate::security::run_action;
use crate::support::*;

const EVIL: &str = "<script>document.title='pwned'</script>";
/// How the DOM serialises that tag when it is text, as it must be.
const EVIL_AS_TEXT: &str = "&lt;script&gt;document.title='pwned'&lt;/script&gt;";

/// Debian's Chromium, which `make test-deps` installs.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium not found on PATH: run `make test-deps` (it installs Debian's chromium \
             package), then run this test again"
        )
    })
}

/// A headless Chromium with a profile of its own, so tests running at once do not share one.
struct Browser {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            binary: chromium(),
            profile: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs Chromium with `args` and returns what it printed, failing the test after a
    /// deadline (it is killed with its process group when that happens).
    fn run(&self, what: &str, args: &[String]) -> String {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", self.profile.path().display()))
        .args(args)
        .stdout(Stdio::from(out.reopen().unwrap()))
        .stderr(log_file("chromium"));
        let mut proc = Proc::spawn("chromium", cmd);
        let deadline = Instant::now() + 2 * DEADLINE;
        let status = loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "chromium did not finish {what}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "chromium failed {what}: {status}");
        std::fs::read_to_string(out.path()).unwrap()
    }

    /// The page's DOM after its scripts ran for 5 s of (virtual) time: two refreshes.
    fn dom(&self, url: &str) -> String {
        self.run(
            &format!("loading {url}"),
            &[
                "--virtual-time-budget=5000".into(),
                "--dump-dom".into(),
                url.into(),
            ],
        )
    }

    fn screenshot(&self, url: &str, name: &str) -> PathBuf {
        let dir = repo_root().join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        self.run(
            &format!("a screenshot of {url}"),
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1200,900".into(),
                "--virtual-time-budget=1000".into(),
                url.into(),
            ],
        );
        assert!(
            path.is_file(),
            "no screenshot of {url} at {}",
            path.display()
        );
        path
    }
}

/// The `<title>` text of a dumped DOM.
fn title(dom: &str) -> &str {
    let start = dom.find("<title>").map_or(0, |i| i + "<title>".len());
    let end = dom[start..].find("</title>").map_or(start, |i| start + i);
    &dom[start..end]
}

/// Checks what every page's DOM must show: its scripts ran (the refresh landed) and none of
/// the data's did.
fn assert_page(dom: &str, url: &str) {
    assert!(
        !title(dom).contains("pwned"),
        "a script from a job ran on {url}"
    );
    assert!(title(dom).contains("scoot"), "no page at {url}:\n{dom}");
    assert!(
        dom.contains("data-refreshes="),
        "the page's refresh never landed on {url}:\n{dom}"
    );
}

fn job_def(
    tasks: Vec<TaskDefinition>,
    tag: &str,
    requestor: &str,
) -> scoot_thrift::scoot::JobDefinition {
    scoot_thrift::scoot::JobDefinition::new(
        tasks,
        None,
        None,
        None,
        tag.to_string(),
        None,
        requestor.to_string(),
        None,
    )
}

#[test]
fn the_pages_show_jobs_workers_and_operations_in_a_browser() {
    let browser = Browser::new();
    let scheduler = Scheduler::start(&[], serde_json::json!({}));
    let grpc = format!("127.0.0.1:{}", scheduler.grpc_port);
    let worker = Worker::start(&["-cas_addr", &grpc]);
    write_workers(&scheduler.workers_file, &[&worker]);
    let worker_id = format!("127.0.0.1:{}", worker.thrift_port);
    let mut client = scheduler.client();

    // A job that finishes, whose command carries the script too.
    let echo = format!("echo \"{EVIL}\"");
    let finished = client
        .0
        .run_job(job_def(
            vec![task("greet", &["sh", "-c", &echo])],
            "finished-job",
            "alice",
        ))
        .unwrap()
        .id;
    wait_job(&mut client, &finished);

    // A remote execution, through Execute as Bazel would.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let operation = runtime.block_on(async {
        let cas = CasClient::connect(&grpc, "").await.unwrap();
        let out = run_action(&cas, "echo remote > out.txt").await.unwrap();
        assert_eq!(&out[..], b"remote\n");
        let listed = OperationsClient::new(cas.channel().clone())
            .list_operations(ListOperationsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.operations.len(), 1, "{listed:?}");
        listed.operations[0].name.clone()
    });

    // A job still running, whose tag is a script.
    let running = client
        .0
        .run_job(job_def(vec![task("nap", &["sleep", "30"])], EVIL, "bob"))
        .unwrap()
        .id;
    let job_path = format!("/ui/jobs/{running}");
    poll("the running task's output links on its page", || {
        let page = http_get(scheduler.http_port, &job_path, &[]).text();
        page.contains(">stdout</a>").then_some(())
    });

    let base = format!("http://127.0.0.1:{}", scheduler.http_port);
    let root = http_get(scheduler.http_port, "/", &[]);
    assert_eq!(root.status, 303);
    assert_eq!(root.header("location"), Some("/ui/"));

    let jobs = browser.dom(&format!("{base}/"));
    assert_page(&jobs, "/ui/");
    for shown in [&running, &finished, &operation] {
        assert!(
            jobs.contains(shown.as_str()),
            "job {shown} not listed:\n{jobs}"
        );
    }
    assert!(
        jobs.contains(EVIL_AS_TEXT),
        "the tag is not shown as text:\n{jobs}"
    );
    assert!(jobs.contains(">running</span>"), "{jobs}");
    assert!(jobs.contains(">succeeded</span>"), "{jobs}");
    let shot = browser.screenshot(&format!("{base}/ui/"), "jobs.png");

    let page = browser.dom(&format!("{base}{job_path}"));
    assert_page(&page, &job_path);
    assert!(page.contains(EVIL_AS_TEXT), "{page}");
    assert!(page.contains("<td class=\"id\">nap</td>"), "{page}");
    assert!(
        page.contains(&worker_id),
        "the task's worker is not shown:\n{page}"
    );
    let stdout_link = format!("href=\"http://127.0.0.1:{}/output/", worker.http_port);
    assert!(
        page.contains(&stdout_link),
        "no link to the output:\n{page}"
    );
    browser.screenshot(&format!("{base}{job_path}"), "job.png");

    let done_path = format!("/ui/jobs/{finished}");
    let done = browser.dom(&format!("{base}{done_path}"));
    assert_page(&done, &done_path);
    assert!(done.contains(">complete</span>"), "{done}");
    assert!(
        done.contains("<td class=\"num\">0</td>"),
        "no exit code:\n{done}"
    );
    assert!(
        done.contains(EVIL_AS_TEXT),
        "the command is not shown as text:\n{done}"
    );

    let workers = browser.dom(&format!("{base}/ui/workers"));
    assert_page(&workers, "/ui/workers");
    assert!(workers.contains(&worker_id), "{workers}");
    assert!(workers.contains(">running</span>"), "{workers}");
    assert!(workers.contains(">offline</button>"), "{workers}");
    browser.screenshot(&format!("{base}/ui/workers"), "workers.png");

    let operations = browser.dom(&format!("{base}/ui/operations"));
    assert_page(&operations, "/ui/operations");
    assert!(operations.contains(&operation), "{operations}");
    assert!(operations.contains(">completed</span>"), "{operations}");
    assert!(operations.contains(">OK</span>"), "{operations}");
    browser.screenshot(&format!("{base}/ui/operations"), "operations.png");

    let unknown = http_get(scheduler.http_port, "/ui/jobs/no-such-job", &[]);
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("Unknown job"), "{}", unknown.text());

    // Nothing of the running job is left behind.
    client.0.kill_job(running.clone()).unwrap();
    wait_job(&mut client, &running);
    eprintln!("screenshot of /ui/: {}", shot.display());
}
