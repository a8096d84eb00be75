//! The behaviour every [`SagaLog`] implementation shares, as checks its tests run (this crate's
//! logs here; other crates' with the `testing` feature). Each check wants a fresh, empty log.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use crate::error::SagaLogError;
use crate::log::SagaLog;
use crate::message::{MessageKind, SagaMessage};

pub fn check_round_trip(log: &dyn SagaLog) {
    log.start_saga("s1", b"job1").unwrap();
    log.start_saga("s2", b"").unwrap();
    let msgs = vec![
        SagaMessage::start_task("s1", "t1", Vec::new()),
        SagaMessage::start_task("s2", "u", b"x".to_vec()),
        SagaMessage::start_task("s1", "t1", b"running".to_vec()),
        SagaMessage::end_task("s1", "t1", vec![0, 1, 2, 255]),
    ];
    log.log_messages(&msgs).unwrap();
    log.log_messages(&[SagaMessage::end_saga("s1")]).unwrap();
    log.log_messages(&[]).unwrap();
    assert_eq!(
        log.get_messages("s1").unwrap().unwrap(),
        vec![
            SagaMessage::start_saga("s1", b"job1".to_vec()),
            msgs[0].clone(),
            msgs[2].clone(),
            msgs[3].clone(),
            SagaMessage::end_saga("s1"),
        ]
    );
    assert_eq!(
        log.get_messages("s2").unwrap().unwrap(),
        vec![SagaMessage::start_saga("s2", Vec::new()), msgs[1].clone()]
    );
    assert_eq!(log.get_messages("nope").unwrap(), None);
}

pub fn check_unknown_saga_refused(log: &dyn SagaLog) {
    log.start_saga("known", b"j").unwrap();
    let err = log
        .log_messages(&[
            SagaMessage::start_task("known", "t", Vec::new()),
            SagaMessage::start_task("unknown", "t", Vec::new()),
        ])
        .unwrap_err();
    assert!(matches!(err, SagaLogError::InvalidRequest(_)), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(log.get_messages("known").unwrap().unwrap().len(), 1);
    assert_eq!(log.get_messages("unknown").unwrap(), None);
    assert!(matches!(
        log.start_saga("", b""),
        Err(SagaLogError::InvalidRequest(_))
    ));

    // A saga started earlier in the same batch is known.
    let batch = [
        SagaMessage::start_saga("fresh", b"j".to_vec()),
        SagaMessage::start_task("fresh", "t", Vec::new()),
    ];
    log.log_messages(&batch).unwrap();
    assert_eq!(log.get_messages("fresh").unwrap().unwrap(), batch);
}

pub fn check_start_saga_replaces(log: &dyn SagaLog) {
    log.start_saga("s", b"old").unwrap();
    log.log_messages(&[
        SagaMessage::start_task("s", "t", Vec::new()),
        SagaMessage::end_task("s", "t", Vec::new()),
        SagaMessage::end_saga("s"),
    ])
    .unwrap();
    assert!(log.active_sagas().unwrap().is_empty());
    log.start_saga("s", b"new").unwrap();
    assert_eq!(
        log.get_messages("s").unwrap().unwrap(),
        [SagaMessage::start_saga("s", b"new".to_vec())]
    );
    assert_eq!(log.active_sagas().unwrap(), ["s"]);

    // A Start Saga inside a batch replaces too; messages before it are superseded.
    log.log_messages(&[
        SagaMessage::start_task("s", "gone", Vec::new()),
        SagaMessage::start_saga("s", b"newer".to_vec()),
        SagaMessage::start_task("s", "kept", Vec::new()),
    ])
    .unwrap();
    assert_eq!(
        log.get_messages("s").unwrap().unwrap(),
        [
            SagaMessage::start_saga("s", b"newer".to_vec()),
            SagaMessage::start_task("s", "kept", Vec::new()),
        ]
    );
}

pub const ODD_IDS: [&str; 9] = [
    "a/b",
    "..",
    "../../etc/passwd",
    ".",
    "with space",
    "new\nline",
    "ünïcødé ✓ 日本",
    "nul\0byte",
    "UPPER-lower_1234567890",
];

pub fn check_odd_saga_ids(log: &dyn SagaLog) {
    for id in ODD_IDS {
        log.start_saga(id, id.as_bytes()).unwrap();
        log.log_messages(&[SagaMessage::start_task(id, id, id.as_bytes().to_vec())])
            .unwrap();
    }
    for id in ODD_IDS {
        let msgs = log.get_messages(id).unwrap().unwrap();
        assert_eq!(msgs.len(), 2, "{id:?}");
        assert!(msgs.iter().all(|m| m.saga_id == id));
        assert_eq!(msgs[1].task_id, id);
    }
    let mut expected: Vec<String> = ODD_IDS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(log.active_sagas().unwrap(), expected);
}

pub fn check_active_sagas(log: &dyn SagaLog) {
    for id in ["s1", "s2", "s3"] {
        log.start_saga(id, b"").unwrap();
    }
    log.log_messages(&[SagaMessage::end_saga("s2"), SagaMessage::abort_saga("s3")])
        .unwrap();
    assert_eq!(log.active_sagas().unwrap(), ["s1", "s3"]);
    log.log_messages(&[SagaMessage::end_saga("s1")]).unwrap();
    assert_eq!(log.active_sagas().unwrap(), ["s3"]);
}

pub fn check_gc(log: &dyn SagaLog, retention: Duration) {
    log.start_saga("ended", b"").unwrap();
    log.start_saga("running", b"").unwrap();
    log.start_saga("aborted", b"").unwrap();
    log.log_messages(&[
        SagaMessage::end_saga("ended"),
        SagaMessage::abort_saga("aborted"),
    ])
    .unwrap();
    let now = SystemTime::now();
    assert_eq!(log.gc(now).unwrap(), 0, "within retention");
    assert!(log.get_messages("ended").unwrap().is_some());

    let later = now + retention + Duration::from_secs(1);
    assert_eq!(log.gc(later).unwrap(), 1);
    assert_eq!(log.get_messages("ended").unwrap(), None);
    assert!(log.get_messages("running").unwrap().is_some());
    assert!(log.get_messages("aborted").unwrap().is_some());
    assert_eq!(log.active_sagas().unwrap(), ["aborted", "running"]);
    assert_eq!(log.gc(later).unwrap(), 0);

    // A collected id can be started again.
    log.start_saga("ended", b"again").unwrap();
    assert_eq!(
        log.get_messages("ended").unwrap().unwrap()[0].kind,
        MessageKind::StartSaga
    );
}

pub fn check_gc_without_retention(log: &dyn SagaLog) {
    log.start_saga("kept", b"").unwrap();
    log.log_messages(&[SagaMessage::end_saga("kept")]).unwrap();
    let far = SystemTime::now() + Duration::from_secs(100 * 365 * 86400);
    assert_eq!(log.gc(far).unwrap(), 0);
    assert!(log.get_messages("kept").unwrap().is_some());
}

/// Runs every check above, each on a fresh log from `make` (given the retention to keep ended
/// sagas for), naming the check on stderr so that a failure says which.
pub fn check_every(make: &mut dyn FnMut(Option<Duration>) -> Box<dyn SagaLog>) {
    type Check = fn(&dyn SagaLog);
    let cases: [(&str, Check); 6] = [
        ("round trip", check_round_trip),
        ("unknown saga", check_unknown_saga_refused),
        ("replace", check_start_saga_replaces),
        ("odd ids", check_odd_saga_ids),
        ("active", check_active_sagas),
        ("gc without retention", check_gc_without_retention),
    ];
    for (name, check) in cases {
        eprintln!("saga log check: {name}");
        check(make(None).as_ref());
    }
    eprintln!("saga log check: gc");
    let hour = Duration::from_secs(3600);
    check_gc(make(Some(hour)).as_ref(), hour);
}
