//! Captured output of runs: for each run a `<runId>-stdout`, `<runId>-stderr` and a combined
//! `<runId>-stdlog` file, each starting with a header that describes the command and ends with a
//! `SCOOT_CMD_LOG` line, after which the command's own output follows.
//!
//! A run's output is addressed by a URI: `file://<host><path>`, or, when the worker serves its
//! outputs over HTTP, `http://<http_addr>/output/<name>?file=file://<host><path>` (the form
//! Scoot's clients parse). Only the outputs of the most recent `retained_runs` runs are kept,
//! and of those only the most recent whose files add up to at most `retained_bytes` (the run in
//! progress is never removed, whatever it writes; older runs make room for it when the next run
//! starts). Removed outputs answer [`OutputLookup::Gone`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use scoot_core::{Command, RunId};

/// The line that separates the header from the command's output.
pub const CMD_LOG_MARKER: &str = "SCOOT_CMD_LOG";

const STREAMS: [&str; 3] = ["stdout", "stderr", "stdlog"];

/// Default bound on the bytes of retained outputs.
pub const DEFAULT_RETAINED_BYTES: u64 = 4 << 30;

/// What an output name refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputLookup {
    Found(PathBuf),
    /// It existed but has been removed to bound disk use.
    Gone,
    NotFound,
}

pub struct OutputStore {
    dir: PathBuf,
    host: String,
    /// `<http_origin>/output/` when outputs are served over HTTP.
    http_base: Option<String>,
    retained_runs: usize,
    retained_bytes: u64,
    runs: Mutex<VecDeque<Retained>>,
}

/// A run whose outputs are on disk, and their size once the run is over.
struct Retained {
    run: RunId,
    bytes: Option<u64>,
}

impl OutputStore {
    /// `http_origin`: the scheme, host and port other machines reach the outputs at
    /// (`https://worker-3:9093`), when they are served over HTTP.
    pub fn new(dir: PathBuf, http_origin: Option<&str>, retained_runs: usize) -> OutputStore {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".to_string());
        OutputStore {
            dir,
            host,
            http_base: http_origin.map(|origin| format!("{origin}/output/")),
            retained_runs: retained_runs.max(1),
            retained_bytes: DEFAULT_RETAINED_BYTES,
            runs: Mutex::new(VecDeque::new()),
        }
    }

    /// Bounds the outputs of past runs to `bytes` in total (default [`DEFAULT_RETAINED_BYTES`]).
    pub fn with_retained_bytes(mut self, bytes: u64) -> OutputStore {
        self.retained_bytes = bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves an output name such as `3-stdout` to its file.
    pub fn lookup(&self, name: &str) -> OutputLookup {
        let Some((run, stream)) = name.rsplit_once('-') else {
            return OutputLookup::NotFound;
        };
        let Ok(run_number) = run.parse::<u64>() else {
            return OutputLookup::NotFound;
        };
        if !STREAMS.contains(&stream) || run_number.to_string() != run {
            return OutputLookup::NotFound;
        }
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.dir.join(name);
        if runs.iter().any(|r| r.run.0 == run) && path.exists() {
            OutputLookup::Found(path)
        } else if runs.back().and_then(|r| r.run.0.parse::<u64>().ok()) >= Some(run_number) {
            OutputLookup::Gone
        } else {
            OutputLookup::NotFound
        }
    }

    /// The names of the retained outputs, oldest run first.
    pub fn names(&self) -> Vec<String> {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.iter()
            .flat_map(|r| STREAMS.map(|stream| format!("{}-{stream}", r.run)))
            .collect()
    }

    /// Creates the three output files of a run and writes their headers. REAPI actions get no
    /// header: their stdout and stderr go back to the client as the action's, byte for byte.
    pub fn create(&self, run_id: &RunId, cmd: &Command) -> io::Result<RunOutputs> {
        let names = STREAMS.map(|stream| format!("{run_id}-{stream}"));
        let uris = names.clone().map(|name| self.uri(&name));
        let header = match cmd.reapi_request {
            Some(_) => String::new(),
            None => header(&uris, cmd),
        };
        let mut files = Vec::with_capacity(3);
        for name in &names {
            let mut file = File::create(self.dir.join(name))?;
            file.write_all(header.as_bytes())?;
            files.push(file);
        }
        self.retain(run_id);
        let [stdout, stderr, stdlog]: [File; 3] = files
            .try_into()
            .map_err(|_| io::Error::other("three output files expected"))?;
        let [stdout_uri, stderr_uri, _] = uris;
        let [stdout_path, stderr_path, _] = names.map(|name| self.dir.join(name));
        Ok(RunOutputs {
            stdout,
            stderr,
            stdlog,
            stdout_uri,
            stderr_uri,
            stdout_path,
            stderr_path,
        })
    }

    fn uri(&self, name: &str) -> String {
        let file_uri = format!("file://{}{}", self.host, self.dir.join(name).display());
        match &self.http_base {
            Some(base) => format!("{base}{name}?file={file_uri}"),
            None => file_uri,
        }
    }

    /// Adds `run_id` as the run in progress and removes the oldest runs' outputs while over
    /// either bound. Runs before it are over, so their sizes are final and measured once.
    fn retain(&self, run_id: &RunId) {
        let expired: Vec<RunId> = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            for retained in runs.iter_mut().filter(|r| r.bytes.is_none()) {
                retained.bytes = Some(self.size_of(&retained.run));
            }
            runs.push_back(Retained {
                run: run_id.clone(),
                bytes: None,
            });
            let mut total: u64 = runs.iter().filter_map(|r| r.bytes).sum();
            let mut expired = Vec::new();
            while runs.len() > 1 && (runs.len() > self.retained_runs || total > self.retained_bytes)
            {
                let Some(oldest) = runs.pop_front() else {
                    break;
                };
                total -= oldest.bytes.unwrap_or(0);
                expired.push(oldest.run);
            }
            expired
        };
        for run in expired {
            for stream in STREAMS {
                let path = self.dir.join(format!("{run}-{stream}"));
                if let Err(err) = std::fs::remove_file(&path)
                    && err.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove old output");
                }
            }
        }
    }

    /// Bytes on disk of a run's output files (a file that cannot be read counts as empty).
    fn size_of(&self, run: &RunId) -> u64 {
        STREAMS
            .iter()
            .filter_map(|stream| std::fs::metadata(self.dir.join(format!("{run}-{stream}"))).ok())
            .map(|meta| meta.len())
            .sum()
    }
}

fn header(uris: &[String; 3], cmd: &Command) -> String {
    let rule = "#".repeat(80);
    let timeout = cmd
        .timeout
        .map(|t| humantime::format_duration(t).to_string())
        .unwrap_or_else(|| "none".to_string());
    format!(
        "{rule}\n{rule}\n\
         Date: {date}\n\
         Stdout: {stdout}\nStderr: {stderr}\nStdlog: {stdlog}\n\
         Command: {argv:?}\nEnv: {env:?}\nTimeout: {timeout}\nSnapshot: {snapshot}\n\
         JobID: {job} TaskID: {task} Tag: {tag}\n\
         {rule}\n{rule}\n{CMD_LOG_MARKER}\n",
        date = humantime::format_rfc3339_seconds(SystemTime::now()),
        stdout = uris[0],
        stderr = uris[1],
        stdlog = uris[2],
        argv = cmd.argv,
        env = cmd.env,
        snapshot = cmd.snapshot_id,
        job = cmd.tags.job_id,
        task = cmd.tags.task_id,
        tag = cmd.tags.tag,
    )
}

/// The open output files of one run. Writes go straight to the files (no user-space buffer), so
/// readers of the URIs see output as it is produced.
pub struct RunOutputs {
    stdout: File,
    stderr: File,
    stdlog: File,
    pub stdout_uri: String,
    pub stderr_uri: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl RunOutputs {
    pub fn write_stdout(&self, data: &[u8]) {
        write_both(&self.stdout, &self.stdlog, data);
    }

    pub fn write_stderr(&self, data: &[u8]) {
        write_both(&self.stderr, &self.stdlog, data);
    }

    /// Appends a note from the worker (why a run was stopped) to all three files.
    pub fn append_trailer(&self, message: &str) {
        let trailer = format!("\n{}\n{message}\n", "#".repeat(80));
        for mut file in [&self.stdout, &self.stderr, &self.stdlog] {
            if let Err(err) = file.write_all(trailer.as_bytes()) {
                tracing::warn!(error = %err, "cannot append trailer to output");
            }
        }
    }
}

fn write_both(mut one: &File, mut combined: &File, data: &[u8]) {
    if let Err(err) = one.write_all(data).and_then(|_| combined.write_all(data)) {
        tracing::warn!(error = %err, "cannot write task output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn files_have_header_then_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_path_buf(), Some("http://localhost:9093"), 10);
        let cmd = Command {
            argv: vec!["echo".into(), "hi".into()],
            ..Command::default()
        };
        let outputs = store.create(&RunId::from("0"), &cmd).unwrap();
        outputs.write_stdout(b"out\n");
        outputs.write_stderr(b"err\n");

        let stdout = read(dir.path(), "0-stdout");
        let (header, body) = stdout.split_once(&format!("{CMD_LOG_MARKER}\n")).unwrap();
        assert!(header.contains(r#"["echo", "hi"]"#));
        assert_eq!(body, "out\n");
        assert!(read(dir.path(), "0-stderr").ends_with("SCOOT_CMD_LOG\nerr\n"));
        assert!(read(dir.path(), "0-stdlog").ends_with("SCOOT_CMD_LOG\nout\nerr\n"));

        let file_uri = format!(
            "file://{}{}",
            store.host,
            dir.path().join("0-stdout").display()
        );
        assert_eq!(
            outputs.stdout_uri,
            format!("http://localhost:9093/output/0-stdout?file={file_uri}")
        );
    }

    #[test]
    fn reapi_actions_get_no_header() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_path_buf(), None, 10);
        let cmd = Command {
            reapi_request: Some(Vec::new()),
            ..Command::default()
        };
        let outputs = store.create(&RunId::from("0"), &cmd).unwrap();
        outputs.write_stdout(b"out\n");
        assert_eq!(std::fs::read(&outputs.stdout_path).unwrap(), b"out\n");
        assert_eq!(std::fs::read(&outputs.stderr_path).unwrap(), b"");
    }

    #[test]
    fn old_runs_outputs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_path_buf(), None, 2);
        for id in ["0", "1", "2"] {
            store.create(&RunId::from(id), &Command::default()).unwrap();
        }
        assert!(!dir.path().join("0-stdout").exists());
        assert!(dir.path().join("1-stdlog").exists());
        assert!(dir.path().join("2-stderr").exists());
    }

    #[test]
    fn outputs_over_the_byte_bound_are_removed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Each run below writes 100 bytes to stdout, so 200 with stdlog: two runs fit in 450.
        let store = OutputStore::new(dir.path().to_path_buf(), None, 10).with_retained_bytes(450);
        let action = Command {
            reapi_request: Some(Vec::new()),
            ..Command::default()
        };
        for id in ["0", "1", "2"] {
            let outputs = store.create(&RunId::from(id), &action).unwrap();
            outputs.write_stdout(&[b'x'; 100]);
        }
        store.create(&RunId::from("3"), &action).unwrap();
        assert!(!dir.path().join("0-stdout").exists());
        assert!(!dir.path().join("0-stdlog").exists());
        assert_eq!(store.lookup("0-stdout"), OutputLookup::Gone);
        for kept in ["1-stdout", "2-stdlog", "3-stdout"] {
            assert!(dir.path().join(kept).exists(), "{kept}");
        }

        // A run bigger than the bound is kept while it is the latest, then makes way.
        let outputs = store.create(&RunId::from("4"), &action).unwrap();
        outputs.write_stdout(&[b'x'; 1000]);
        assert_eq!(
            std::fs::metadata(dir.path().join("4-stdout"))
                .unwrap()
                .len(),
            1000
        );
        store.create(&RunId::from("5"), &action).unwrap();
        assert_eq!(store.names(), vec!["5-stdout", "5-stderr", "5-stdlog"]);
        for gone in ["1-stdout", "2-stdout", "3-stdout", "4-stdout", "4-stdlog"] {
            assert!(!dir.path().join(gone).exists(), "{gone}");
        }
    }

    #[test]
    fn lookup_tells_found_gone_and_unknown_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_path_buf(), None, 1);
        for id in ["0", "1"] {
            store.create(&RunId::from(id), &Command::default()).unwrap();
        }
        assert_eq!(
            store.lookup("1-stdout"),
            OutputLookup::Found(dir.path().join("1-stdout"))
        );
        assert_eq!(store.lookup("0-stderr"), OutputLookup::Gone);
        assert_eq!(store.names(), vec!["1-stdout", "1-stderr", "1-stdlog"]);
        for unknown in [
            "2-stdout",
            "../1-stdout",
            "1-passwd",
            "-stdout",
            "01-stdout",
            "1/1-stdout",
            "",
        ] {
            assert_eq!(store.lookup(unknown), OutputLookup::NotFound, "{unknown}");
        }
    }
}
