//! `scootcl smoketest`, Scoot's flow: job 0 runs six `cat file.txt` tasks over two snapshots
//! ingested with `scoot-snapshot-db` (a file saying `first`, then `second`) and checks each task's
//! output; the other jobs are generated simulated tasks (`#! sim execer`, sleep 100 ms,
//! complete 0). Every task must complete with exit code 0.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use scoot_thrift::scoot;

use crate::cloudscoot::{Client, ClientError};

#[derive(Clone, Debug)]
pub struct SmokeTest {
    pub num_jobs: usize,
    /// Tasks per job; `None` picks 1 to 10 at random for each job.
    pub num_tasks: Option<usize>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("snapshot job: {0}")]
    Snapshot(String),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("job {job_id} task {task_id} did not succeed: {detail}")]
    TaskFailed {
        job_id: String,
        task_id: String,
        detail: String,
    },
    #[error(
        "timed out after {elapsed:?} with {unfinished} of {total} jobs unfinished (e.g. {example})"
    )]
    Timeout {
        elapsed: Duration,
        unfinished: usize,
        total: usize,
        example: String,
    },
}

pub struct Summary {
    pub jobs: usize,
    pub tasks: usize,
    pub elapsed: Duration,
}

/// A small deterministic generator (splitmix64): task ids and sizes need variety, not security.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Random(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }
}

/// A job of the smoke test's requestor.
fn smoketest_job(tasks: Vec<scoot::TaskDefinition>) -> scoot::JobDefinition {
    scoot::JobDefinition::new(
        tasks,
        None,
        None,
        None,
        None,
        None,
        Some("smoketest".to_string()),
        None,
    )
}

fn generated_job(index: usize, tasks: usize, random: &mut Random) -> scoot::JobDefinition {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let tasks = (0..tasks)
        .map(|t| {
            let suffix: String = (0..random.between(1, 20))
                .map(|_| ALPHABET[random.between(0, ALPHABET.len() - 1)] as char)
                .collect();
            let argv = ["#! sim execer", "sleep 100", "complete 0"]
                .map(str::to_string)
                .to_vec();
            scoot::TaskDefinition::new(
                scoot::Command::new(argv, None),
                None,
                Some(format!("{index}{t}{suffix}")),
                None,
            )
        })
        .collect();
    smoketest_job(tasks)
}

/// Jobs of simulated tasks like Scoot's generated ones: task ids `<job><task><random>`, each
/// `#! sim execer` / `sleep 100` / `complete 0`; `tasks_per_job` `None` picks 1 to 10 per job.
pub fn generate_jobs(count: usize, tasks_per_job: Option<usize>) -> Vec<scoot::JobDefinition> {
    let mut random = Random::new();
    (0..count)
        .map(|index| {
            let tasks = tasks_per_job.unwrap_or_else(|| random.between(1, 10));
            generated_job(index, tasks, &mut random)
        })
        .collect()
}

/// Submits every job; returns job id → number of tasks.
pub fn submit_jobs(
    client: &mut Client,
    jobs: Vec<scoot::JobDefinition>,
    deadline: Instant,
) -> Result<BTreeMap<String, usize>, SmokeError> {
    let mut submitted = BTreeMap::new();
    for def in jobs {
        let tasks = def.tasks.len();
        submitted.insert(submit(client, def, deadline)?, tasks);
    }
    Ok(submitted)
}

/// Waits until every job completed with every task COMPLETE and exit code 0, showing progress
/// (a bar redrawn in place on a terminal, a line per change otherwise).
pub fn wait_for_jobs(
    client: &mut Client,
    jobs: &BTreeMap<String, usize>,
    deadline: Instant,
    progress: &mut dyn Write,
) -> Result<(), SmokeError> {
    let started = Instant::now();
    let total_tasks: usize = jobs.values().sum();
    let mut unfinished: Vec<String> = jobs.keys().cloned().collect();
    let mut done_tasks = 0;
    let interactive = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    while !unfinished.is_empty() {
        let mut still = Vec::new();
        let mut running = 0;
        for job_id in unfinished {
            let status = client.get_status(&job_id)?;
            if status.status == scoot::Status::COMPLETED
                || status.status == scoot::Status::ROLLED_BACK
            {
                check_job(&job_id, &status)?;
                done_tasks += jobs[&job_id];
            } else {
                let data = status.task_data.unwrap_or_default();
                running += data
                    .values()
                    .filter(|d| d.status == scoot::RunStatusState::RUNNING)
                    .count();
                still.push(job_id);
            }
        }
        unfinished = still;
        let line = format!(
            "jobs {}/{} done, tasks {}/{} done, {} running",
            jobs.len() - unfinished.len(),
            jobs.len(),
            done_tasks,
            total_tasks,
            running
        );
        if interactive {
            let _ = write!(progress, "\r[{}] {line}   ", bar(done_tasks, total_tasks));
        } else if line != last_line {
            let _ = writeln!(progress, "{line}");
        }
        last_line = line;
        let _ = progress.flush();
        if unfinished.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            if interactive {
                let _ = writeln!(progress);
            }
            return Err(SmokeError::Timeout {
                elapsed: started.elapsed(),
                unfinished: unfinished.len(),
                total: jobs.len(),
                example: unfinished[0].clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if interactive {
        let _ = writeln!(progress);
    }
    Ok(())
}

impl SmokeTest {
    pub fn run(
        &self,
        client: &mut Client,
        progress: &mut dyn Write,
    ) -> Result<Summary, SmokeError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let workdir = tempfile_dir()?;
        let (snapshot_job, expected) = snapshot_job(workdir.path())?;
        let snapshot_tasks = snapshot_job.tasks.len();
        let first = submit(client, snapshot_job, deadline)?;
        let generated = generate_jobs(self.num_jobs.saturating_sub(1), self.num_tasks);
        let mut submitted = submit_jobs(client, generated, deadline)?;
        submitted.insert(first.clone(), snapshot_tasks);
        wait_for_jobs(client, &submitted, deadline, progress)?;
        check_outputs(&client.get_status(&first)?, &expected)?;
        Ok(Summary {
            jobs: submitted.len(),
            tasks: submitted.values().sum(),
            elapsed: started.elapsed(),
        })
    }
}

fn tempfile_dir() -> Result<TempDir, SmokeError> {
    TempDir::new("scoot-smoketest")
        .map_err(|e| SmokeError::Snapshot(format!("cannot create a work directory: {e}")))
}

/// A temporary directory removed when dropped (std only; the client has no async runtime).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> std::io::Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `scoot-snapshot-db` next to this executable, else the one on PATH.
fn snapshot_db_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("scoot-snapshot-db")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("scoot-snapshot-db"))
}

fn command_output(cmd: &mut Command, what: &str) -> Result<String, SmokeError> {
    let output = cmd
        .output()
        .map_err(|e| SmokeError::Snapshot(format!("cannot run {what}: {e}")))?;
    if !output.status.success() {
        return Err(SmokeError::Snapshot(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Ingests `file.txt` = "first" and then "second" and builds Scoot's job 0 over the two snapshots.
/// Returns the job and, per task id, the content its output must end with.
fn snapshot_job(
    workdir: &Path,
) -> Result<(scoot::JobDefinition, Vec<(String, String)>), SmokeError> {
    // scoot-snapshot-db works from inside a git repository (its data repo).
    let repo = workdir.join("repo");
    let data = workdir.join("data");
    for dir in [&repo, &data] {
        std::fs::create_dir(dir)
            .map_err(|e| SmokeError::Snapshot(format!("cannot create {}: {e}", dir.display())))?;
    }
    command_output(
        Command::new("git").args(["init", "-q"]).current_dir(&repo),
        "git init",
    )?;
    let db = snapshot_db_binary();
    let mut ids = Vec::new();
    for content in ["first", "second"] {
        std::fs::write(data.join("file.txt"), content)
            .map_err(|e| SmokeError::Snapshot(format!("cannot write file.txt: {e}")))?;
        let id = command_output(
            Command::new(&db)
                .args(["create", "ingest_dir", "--dir"])
                .arg(&data)
                .current_dir(&repo),
            "scoot-snapshot-db create ingest_dir",
        )?;
        ids.push((id, content.to_string()));
    }
    let layout = [0, 1, 0, 0, 1, 1];
    let mut expected = Vec::new();
    let tasks = layout
        .iter()
        .enumerate()
        .map(|(n, which)| {
            let (snapshot, content) = &ids[*which];
            let task_id = format!("id{}", n + 1);
            expected.push((task_id.clone(), content.clone()));
            let argv = ["cat", "file.txt"].map(str::to_string).to_vec();
            scoot::TaskDefinition::new(
                scoot::Command::new(argv, None),
                Some(snapshot.clone()),
                Some(task_id),
                None,
            )
        })
        .collect();
    let job = smoketest_job(tasks);
    Ok((job, expected))
}

/// Each task's stdout (the local file behind its outUri) must end with the expected content.
fn check_outputs(
    status: &scoot::JobStatus,
    expected: &[(String, String)],
) -> Result<(), SmokeError> {
    let data = status.task_data.clone().unwrap_or_default();
    for (task, content) in expected {
        let uri = data
            .get(task)
            .and_then(|r| r.out_uri.clone())
            .ok_or_else(|| SmokeError::Snapshot(format!("task {task} has no outUri")))?;
        let path = local_path_of(&uri).ok_or_else(|| {
            SmokeError::Snapshot(format!("task {task}: no file:// path in {uri}"))
        })?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            SmokeError::Snapshot(format!("task {task}: cannot read {}: {e}", path.display()))
        })?;
        if !text.ends_with(content.as_str()) {
            return Err(SmokeError::TaskFailed {
                job_id: status.id.clone(),
                task_id: task.clone(),
                detail: format!(
                    "output should end with {content:?}: {:?}",
                    text.lines().last().unwrap_or("")
                ),
            });
        }
    }
    Ok(())
}

/// The absolute path in `…file://<host>/<path>` (the smoke test runs on the workers' machine).
fn local_path_of(uri: &str) -> Option<PathBuf> {
    let file_uri = &uri[uri.find("file://")? + "file://".len()..];
    Some(PathBuf::from(&file_uri[file_uri.find('/')?..]))
}

fn bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

/// RunJob, retried while the scheduler is unreachable (it may be starting) until `deadline`.
fn submit(
    client: &mut Client,
    def: scoot::JobDefinition,
    deadline: Instant,
) -> Result<String, SmokeError> {
    loop {
        match client.run_job(def.clone()) {
            Ok(id) => return Ok(id),
            Err(err @ ClientError::Refused(_)) => return Err(err.into()),
            Err(err) if Instant::now() >= deadline => return Err(err.into()),
            Err(err) => {
                tracing::warn!(error = %err, "RunJob failed; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

pub fn check_job(job_id: &str, status: &scoot::JobStatus) -> Result<(), SmokeError> {
    let data = status.task_data.clone().unwrap_or_default();
    for (task_id, state) in status.task_status.clone().unwrap_or_default() {
        let run = data.get(&task_id);
        let ok = state == scoot::Status::COMPLETED
            && run.is_some_and(|r| {
                r.status == scoot::RunStatusState::COMPLETE && r.exit_code == Some(0)
            });
        if !ok {
            let detail = match run {
                Some(r) => format!(
                    "run state {:?}, exit code {:?}, error {:?}",
                    r.status,
                    r.exit_code,
                    r.error.clone().unwrap_or_default()
                ),
                None => format!("task state {state:?} with no run status"),
            };
            return Err(SmokeError::TaskFailed {
                job_id: job_id.to_string(),
                task_id,
                detail,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_jobs_have_unique_sim_tasks() {
        let mut random = Random(7);
        let job = generated_job(3, 10, &mut random);
        let mut ids: Vec<String> = job.tasks.iter().filter_map(|t| t.task_id.clone()).collect();
        assert!(ids.iter().all(|id| id.starts_with('3')));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
        assert_eq!(
            job.tasks[0].command.argv.as_ref().unwrap()[0],
            "#! sim execer"
        );
        for _ in 0..100 {
            let n = random.between(1, 10);
            assert!((1..=10).contains(&n));
        }
    }

    #[test]
    fn local_paths_come_from_file_uris() {
        let uri = "http://localhost:10100/output/0-stdout?file=file://host/tmp/out/0-stdout";
        assert_eq!(local_path_of(uri), Some(PathBuf::from("/tmp/out/0-stdout")));
        assert_eq!(local_path_of("file://h/x"), Some(PathBuf::from("/x")));
        assert_eq!(local_path_of("http://nothing"), None);
    }

    #[test]
    fn failed_tasks_are_named() {
        let mut data = BTreeMap::new();
        data.insert(
            "t".to_string(),
            scoot::RunStatus::new(
                scoot::RunStatusState::FAILED,
                "0".into(),
                None,
                None,
                Some("boom".to_string()),
                Some(240),
                None,
                None,
                None,
                None,
            ),
        );
        let status = scoot::JobStatus::new(
            "j".to_string(),
            scoot::Status::COMPLETED,
            Some([("t".to_string(), scoot::Status::COMPLETED)].into()),
            Some(data),
        );
        let err = check_job("j", &status).unwrap_err().to_string();
        assert!(
            err.contains("job j task t") && err.contains("boom"),
            "{err}"
        );
    }
}
