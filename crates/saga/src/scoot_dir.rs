//! Reading a saga that Go Scoot's file saga log wrote, so that a scheduler started on Scoot's
//! saga directory carries its jobs on.
//!
//! Scoot kept one directory per saga, named by the saga id, holding a line-oriented `log` file
//! and one data file per message that carries data:
//!
//! ```text
//! Start Saga\n<data file path>\n
//! Start Task\n<task id>\n<data file path>\n     (End Task, Start Comp Task, End Comp Task alike)
//! End Saga\n                                     (Abort Saga alike)
//! ```
//!
//! Message names are Scoot's display names. A data file path is the path Scoot's scheduler
//! wrote it at, often relative to that scheduler's working directory, so a file is looked up by
//! its name inside the saga's directory first (the directory may have been moved or copied) and
//! at the recorded path second. The data files were written before their log record but not
//! fsynced, so after a crash a recorded task file may be missing or empty: the message is kept
//! without data (a task status is informative; the saga's state does not depend on it). A missing
//! Start Saga file leaves the job unknown, so that saga cannot be read.
//!
//! Scoot fsynced the log after each write, so only the last record can have been cut by a crash:
//! a record missing lines at the end of the file, or whose last line has no newline, is a torn
//! write and is dropped. Anything else that does not parse is damage. A second Start Saga (Scoot
//! appended one when a saga id was started again) replaces what came before it. The messages are
//! replayed through [`SagaState`], which drops any the saga rules refuse.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::SagaLogError;
use crate::message::{MessageKind, SagaMessage};
use crate::state::SagaState;

/// The name of the log file inside a Scoot saga directory.
pub const LOG_FILE: &str = "log";

/// What a Scoot saga directory holds.
#[derive(Debug)]
pub struct ScootSaga {
    pub messages: Vec<SagaMessage>,
    /// The record a crash cut off, if any (dropped).
    pub torn: Option<String>,
    /// Messages the saga rules refused (dropped), with why.
    pub refused: Vec<String>,
}

fn kind_of(line: &str) -> Option<MessageKind> {
    MessageKind::ALL.into_iter().find(|k| k.to_string() == line)
}

/// Whether `dir` looks like one of Scoot's saga directories.
pub fn is_scoot_saga_dir(dir: &Path) -> bool {
    dir.join(LOG_FILE).is_file()
}

/// Reads the data file a record names: `Ok(None)` if it is gone.
fn read_data(saga_dir: &Path, recorded: &str) -> Result<Option<Vec<u8>>, SagaLogError> {
    let name = recorded.rsplit('/').next().unwrap_or(recorded);
    let candidates = [saga_dir.join(name), Path::new(recorded).to_path_buf()];
    for path in candidates.iter().filter(|_| !name.is_empty()) {
        match fs::read(path) {
            Ok(data) => return Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SagaLogError::Internal(format!(
                    "read {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(None)
}

/// Reads the saga `saga_id` from Scoot's directory `saga_dir`. Fails with
/// [`SagaLogError::Unreadable`] when the job cannot be recovered and [`SagaLogError::Corrupt`]
/// when the log is damaged other than by a torn last write.
pub fn read_scoot_saga(saga_dir: &Path, saga_id: &str) -> Result<ScootSaga, SagaLogError> {
    let log_path = saga_dir.join(LOG_FILE);
    let bytes = fs::read(&log_path)
        .map_err(|e| SagaLogError::Internal(format!("read {}: {e}", log_path.display())))?;
    let corrupt = |what: String| SagaLogError::Corrupt(format!("{}: {what}", log_path.display()));

    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // The text after the last newline: empty after a complete write, else a torn line.
    let tail = lines.pop().unwrap_or_default();
    let mut torn = (!tail.is_empty()).then(|| String::from_utf8_lossy(tail).into_owned());

    let mut records: Vec<(MessageKind, String, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let text = |at: usize| {
            std::str::from_utf8(lines[at])
                .map_err(|_| corrupt(format!("line {} is not UTF-8", at + 1)))
        };
        let name = text(i)?;
        let kind = kind_of(name)
            .ok_or_else(|| corrupt(format!("line {}: unknown message {name:?}", i + 1)))?;
        let extra = match kind {
            MessageKind::StartSaga => 1,
            k if k.is_task_message() => 2,
            _ => 0,
        };
        if i + extra >= lines.len() {
            // The record's remaining lines (perhaps a torn one) belong to the cut final write.
            torn = Some(name.to_owned());
            break;
        }
        let (task_id, data_path) = match kind {
            MessageKind::StartSaga => (String::new(), text(i + 1)?),
            k if k.is_task_message() => (text(i + 1)?.to_owned(), text(i + 2)?),
            _ => (String::new(), ""),
        };
        let data = if extra == 0 {
            Vec::new()
        } else {
            match read_data(saga_dir, data_path)? {
                Some(data) => data,
                None if kind == MessageKind::StartSaga => {
                    return Err(SagaLogError::Unreadable(format!(
                        "{}: the job's data file {data_path:?} is missing",
                        log_path.display()
                    )));
                }
                None => {
                    tracing::warn!(
                        saga_id,
                        task_id,
                        data_file = data_path,
                        "a task status file of a Scoot saga is missing; kept without its status"
                    );
                    Vec::new()
                }
            }
        };
        records.push((kind, task_id, data));
        i += extra + 1;
    }

    let start = records
        .iter()
        .rposition(|(kind, ..)| *kind == MessageKind::StartSaga)
        .ok_or_else(|| {
            SagaLogError::Unreadable(format!("{}: no Start Saga", log_path.display()))
        })?;
    if records
        .first()
        .is_some_and(|(kind, ..)| *kind != MessageKind::StartSaga)
    {
        return Err(corrupt("does not begin with Start Saga".into()));
    }
    let mut records = records.split_off(start).into_iter();
    let Some((_, _, job)) = records.next() else {
        return Err(SagaLogError::Unreadable(format!(
            "{}: no Start Saga",
            log_path.display()
        )));
    };
    let mut state = SagaState::new(saga_id, job.clone())
        .map_err(|e| SagaLogError::InvalidRequest(e.to_string()))?;
    let mut messages = vec![SagaMessage::start_saga(saga_id, job)];
    let mut refused = Vec::new();
    for (kind, task_id, data) in records {
        let message = SagaMessage {
            saga_id: saga_id.to_owned(),
            kind,
            task_id,
            data,
        };
        match state.apply(&message) {
            Ok(()) => messages.push(message),
            Err(err) => refused.push(err.to_string()),
        }
    }
    Ok(ScootSaga {
        messages,
        torn,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a saga directory as Scoot's file log did: data files named after the message,
    /// paths recorded relative to another working directory.
    pub fn write_scoot_saga(root: &Path, saga_id: &str, records: &[(MessageKind, &str, &[u8])]) {
        let dir = root.join(saga_id);
        fs::create_dir_all(&dir).unwrap();
        let mut log = String::new();
        for (n, (kind, task_id, data)) in records.iter().enumerate() {
            log.push_str(&format!("{kind}\n"));
            let file = match kind {
                MessageKind::StartSaga => format!("StartSagaData_Dec  5 12:00:00.{n:09}"),
                k if k.is_task_message() => format!("{k}_{task_id}_data_Dec  5 12:00:00.{n:03}"),
                _ => continue,
            };
            fs::write(dir.join(&file), data).unwrap();
            if kind.is_task_message() {
                log.push_str(&format!("{task_id}\n"));
            }
            log.push_str(&format!(".scootdata/filesagalog/{saga_id}/{file}\n"));
        }
        fs::write(dir.join(LOG_FILE), log).unwrap();
    }

    fn append(root: &Path, saga_id: &str, text: &str) {
        use std::io::Write;
        fs::OpenOptions::new()
            .append(true)
            .open(root.join(saga_id).join(LOG_FILE))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn every_message_kind_and_a_torn_last_record() {
        let root = tempfile::tempdir().unwrap();
        use MessageKind::*;
        write_scoot_saga(
            root.path(),
            "s",
            &[
                (StartSaga, "", b"job"),
                (StartTask, "t1", b""),
                (StartTask, "t1", b"{running}"),
                (EndTask, "t1", b"{done}"),
                (StartTask, "t2", b""),
                (AbortSaga, "", b""),
                (StartCompTask, "t2", b"c"),
                (EndCompTask, "t2", b"cd"),
                (StartCompTask, "t1", b""),
                (EndCompTask, "t1", b""),
                (EndSaga, "", b""),
            ],
        );
        append(
            root.path(),
            "s",
            "Start Task\nt3\n.scootdata/filesagalog/s/Sta",
        );
        let saga = read_scoot_saga(&root.path().join("s"), "s").unwrap();
        let kinds: Vec<_> = saga.messages.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                StartSaga,
                StartTask,
                StartTask,
                EndTask,
                StartTask,
                AbortSaga,
                StartCompTask,
                EndCompTask,
                StartCompTask,
                EndCompTask,
                EndSaga
            ]
        );
        assert_eq!(saga.messages[0].data, b"job");
        assert_eq!(saga.messages[3].data, b"{done}");
        assert_eq!(saga.messages[7].data, b"cd");
        assert!(saga.messages.iter().all(|m| m.saga_id == "s"));
        assert!(saga.torn.is_some());
        assert!(saga.refused.is_empty());
    }

    #[test]
    fn a_record_missing_lines_at_the_end_is_torn() {
        let root = tempfile::tempdir().unwrap();
        write_scoot_saga(root.path(), "s", &[(MessageKind::StartSaga, "", b"j")]);
        append(root.path(), "s", "End Task\nt1\n");
        let saga = read_scoot_saga(&root.path().join("s"), "s").unwrap();
        assert_eq!(saga.messages.len(), 1);
        assert_eq!(saga.torn.as_deref(), Some("End Task"));
    }

    #[test]
    fn damage_and_missing_files() {
        let root = tempfile::tempdir().unwrap();
        write_scoot_saga(root.path(), "bad", &[(MessageKind::StartSaga, "", b"j")]);
        append(root.path(), "bad", "Bogus\nEnd Saga\n");
        assert!(matches!(
            read_scoot_saga(&root.path().join("bad"), "bad"),
            Err(SagaLogError::Corrupt(_))
        ));

        let dir = root.path().join("nojob");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(LOG_FILE), "Start Saga\n/gone/StartSagaData_x\n").unwrap();
        assert!(matches!(
            read_scoot_saga(&dir, "nojob"),
            Err(SagaLogError::Unreadable(_))
        ));

        // A lost task status file leaves the message without data.
        write_scoot_saga(root.path(), "lost", &[(MessageKind::StartSaga, "", b"j")]);
        append(
            root.path(),
            "lost",
            "End Task\nt\n/gone/End Task_t_data_x\n",
        );
        let saga = read_scoot_saga(&root.path().join("lost"), "lost").unwrap();
        // Refused: End Task without Start Task.
        assert_eq!(saga.messages.len(), 1);
        assert_eq!(saga.refused.len(), 1);
    }

    #[test]
    fn a_second_start_saga_replaces_the_first_and_absolute_paths_are_read() {
        let root = tempfile::tempdir().unwrap();
        use MessageKind::*;
        write_scoot_saga(
            root.path(),
            "s",
            &[(StartSaga, "", b"old"), (StartTask, "t", b"")],
        );
        let elsewhere = root.path().join("elsewhere");
        fs::write(&elsewhere, b"new").unwrap();
        append(
            root.path(),
            "s",
            &format!("Start Saga\n{}\n", elsewhere.display()),
        );
        let saga = read_scoot_saga(&root.path().join("s"), "s").unwrap();
        assert_eq!(
            saga.messages,
            [SagaMessage::start_saga("s", b"new".to_vec())]
        );
    }
}
