use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::*;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn percents(entries: &[(&str, i32)]) -> BTreeMap<String, i32> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// An algorithm whose classes are `entries`; a requestor equal to a class name maps to it.
fn alg_for(entries: &[(&str, i32)]) -> LoadBasedAlg {
    LoadBasedAlg::new(ClassConfig {
        load_percents: percents(entries),
        requestor_to_class: entries
            .iter()
            .map(|(k, _)| (format!("^{k}$"), (*k).to_owned()))
            .collect(),
        ..ClassConfig::default()
    })
    .unwrap()
}

/// A job whose running tasks started at 1s, 2s, ... and whose waiting tasks are w0, w1, ...
fn job(id: &str, requestor: &str, running: usize, waiting: usize) -> JobView {
    JobView {
        job_id: id.to_owned(),
        requestor: requestor.to_owned(),
        waiting_count: waiting,
        running_count: running,
        waiting: (0..waiting).map(|t| format!("w{t}")).collect(),
        running: (0..running)
            .map(|t| RunningTask {
                task_id: format!("r{t}"),
                started_at: secs(t as u64 + 1),
            })
            .collect(),
    }
}

/// `njobs` jobs of `class` sharing `running` and `waiting` tasks as evenly as possible.
fn class_jobs(class: &str, running: usize, waiting: usize, njobs: usize) -> Vec<JobView> {
    (0..njobs)
        .map(|j| {
            let r = running / njobs + usize::from(j < running % njobs);
            let w = waiting / njobs + usize::from(j < waiting % njobs);
            job(&format!("{class}-{j}"), class, r, w)
        })
        .collect()
}

/// (class, percent, running, waiting, jobs)
type ClassSpec<'a> = (&'a str, i32, usize, usize, usize);

fn jobs_from(specs: &[ClassSpec]) -> Vec<JobView> {
    specs
        .iter()
        .filter(|s| s.4 > 0)
        .flat_map(|s| class_jobs(s.0, s.2, s.3, s.4))
        .collect()
}

fn busy(specs: &[ClassSpec]) -> usize {
    specs.iter().map(|s| s.2).sum()
}

/// Checks the invariants every decision must hold, and returns starts per job id.
fn check(decision: &Decision, jobs: &[JobView], idle: usize) {
    let starts: HashSet<&(JobId, TaskId)> = decision.start.iter().collect();
    assert_eq!(
        starts.len(),
        decision.start.len(),
        "a task was started twice"
    );
    let stops: HashSet<&(JobId, TaskId)> = decision.stop.iter().collect();
    assert_eq!(stops.len(), decision.stop.len(), "a task was stopped twice");
    assert!(
        decision.start.len() <= idle + decision.stop.len(),
        "{} starts for {} idle workers and {} stops",
        decision.start.len(),
        idle,
        decision.stop.len()
    );
    for (j, t) in &decision.start {
        assert!(
            jobs.iter()
                .any(|job| &job.job_id == j && job.waiting.contains(t)),
            "started {j}/{t}, which is not waiting"
        );
    }
    for (j, t) in &decision.stop {
        assert!(
            jobs.iter()
                .any(|job| &job.job_id == j && job.running.iter().any(|r| &r.task_id == t)),
            "stopped {j}/{t}, which is not running"
        );
    }
}

/// Runs one step over `specs` with every worker not running a task idle; checks invariants and
/// returns (starting, stopping) per class.
fn step(
    alg: &mut LoadBasedAlg,
    now: Duration,
    workers: usize,
    specs: &[ClassSpec],
) -> BTreeMap<String, (usize, usize)> {
    let jobs = jobs_from(specs);
    let idle = workers - busy(specs);
    let decision = alg.schedule(now, workers, idle, &jobs);
    check(&decision, &jobs, idle);
    let counts = per_class(alg);
    let (starting, stopping) = counts
        .values()
        .fold((0, 0), |(a, b), (s, p)| (a + s, b + p));
    assert_eq!(starting, decision.start.len());
    assert_eq!(stopping, decision.stop.len());
    counts
}

fn per_class(alg: &LoadBasedAlg) -> BTreeMap<String, (usize, usize)> {
    alg.last_stats()
        .iter()
        .map(|s| (s.class.clone(), (s.starting, s.stopping)))
        .collect()
}

fn starts_of(counts: &BTreeMap<String, (usize, usize)>, class: &str) -> usize {
    counts.get(class).map_or(0, |c| c.0)
}

fn stops_of(counts: &BTreeMap<String, (usize, usize)>, class: &str) -> usize {
    counts.get(class).map_or(0, |c| c.1)
}

fn run_once(entries: &[(&str, i32)], workers: usize, specs: &[ClassSpec]) -> Vec<usize> {
    let mut alg = alg_for(entries);
    let counts = step(&mut alg, Duration::ZERO, workers, specs);
    specs.iter().map(|s| starts_of(&counts, s.0)).collect()
}

fn entries_of<'a>(specs: &[ClassSpec<'a>]) -> Vec<(&'a str, i32)> {
    specs.iter().map(|s| (s.0, s.1)).collect()
}

// ---------------------------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_match_scoot() {
    let alg = LoadBasedAlg::default();
    let cfg = alg.config();
    assert_eq!(
        cfg.load_percents,
        percents(&[
            ("land", 40),
            ("diff", 25),
            ("sandbox", 10),
            ("regression", 17),
            ("ktf", 3),
            ("coverage", 2),
            ("tryout", 2),
            ("unknown", 1),
        ])
    );
    assert_eq!(cfg.load_percents.values().sum::<i32>(), 100);
    assert_eq!(cfg.requestor_to_class.len(), 9);
    assert_eq!(cfg.requestor_to_class["CI.*"], "regression");
    assert_eq!(cfg.requestor_to_class["jenkins.*"], "ktf");
    assert_eq!(cfg.rebalance_min_duration, secs(240));
    assert_eq!(cfg.rebalance_threshold, 0);
    assert!(!cfg.rebalancing_enabled());
    assert_eq!(
        alg.classes_by_desc_percent(),
        [
            "land",
            "diff",
            "regression",
            "sandbox",
            "ktf",
            "coverage",
            "tryout",
            "unknown"
        ]
    );
}

#[test]
fn percents_not_adding_to_100_are_rescaled() {
    let mut alg = LoadBasedAlg::default();
    alg.set_load_percents(percents(&[("a", 30), ("b", 30), ("c", 20)]))
        .unwrap();
    // sum 80: b = floor(3000/80) = 37, c = floor(2000/80) = 25, a (first of the tied largest)
    // absorbs the rest: 100 - 62 = 38.
    assert_eq!(
        alg.load_percents(),
        percents(&[("a", 38), ("b", 37), ("c", 25)])
    );
    assert_eq!(alg.classes_by_desc_percent(), ["a", "b", "c"]);

    alg.set_load_percents(percents(&[("x", 1), ("y", 1), ("z", 1)]))
        .unwrap();
    assert_eq!(
        alg.load_percents(),
        percents(&[("x", 34), ("y", 33), ("z", 33)])
    );

    // Over 100 is scaled down too: sum 200 -> b = 50, c = 25, a = 25.
    alg.set_load_percents(percents(&[("a", 50), ("b", 100), ("c", 50)]))
        .unwrap();
    assert_eq!(
        alg.load_percents(),
        percents(&[("a", 25), ("b", 50), ("c", 25)])
    );
}

#[test]
fn percents_adding_to_100_are_kept_verbatim() {
    let mut alg = LoadBasedAlg::default();
    let p = percents(&[("a", 70), ("b", 0), ("c", 30)]);
    alg.set_load_percents(p.clone()).unwrap();
    assert_eq!(alg.load_percents(), p);
}

#[test]
fn invalid_percents_are_rejected_and_leave_the_old_ones() {
    let mut alg = LoadBasedAlg::default();
    let before = alg.load_percents();
    assert_eq!(
        alg.set_load_percents(BTreeMap::new()),
        Err(ConfigError::EmptyLoadPercents)
    );
    assert_eq!(
        alg.set_load_percents(percents(&[("a", 110), ("b", -10)])),
        Err(ConfigError::NegativePercent {
            class: "b".into(),
            percent: -10
        })
    );
    assert_eq!(
        alg.set_load_percents(percents(&[("a", 0), ("b", 0)])),
        Err(ConfigError::ZeroPercentTotal)
    );
    assert_eq!(alg.load_percents(), before);

    let bad = ClassConfig {
        load_percents: BTreeMap::new(),
        ..ClassConfig::default()
    };
    assert_eq!(
        LoadBasedAlg::new(bad).err(),
        Some(ConfigError::EmptyLoadPercents)
    );
}

#[test]
fn requestor_patterns_must_be_valid_regexes() {
    let mut alg = LoadBasedAlg::default();
    let before = alg.requestor_map();
    let mut map = before.clone();
    map.insert("broken(".into(), "land".into());
    let err = alg.set_requestor_map(map.clone()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidRequestorRegex { pattern, .. } if pattern == "broken("),
        "{err:?}"
    );
    assert!(err.to_string().contains("broken("));
    assert_eq!(alg.requestor_map(), before);

    let bad = ClassConfig {
        requestor_to_class: map,
        ..ClassConfig::default()
    };
    assert!(matches!(
        LoadBasedAlg::new(bad),
        Err(ConfigError::InvalidRequestorRegex { .. })
    ));

    let good: BTreeMap<String, String> = [("^svc-(a|b)$".to_owned(), "land".to_owned())].into();
    alg.set_requestor_map(good.clone()).unwrap();
    assert_eq!(alg.requestor_map(), good);
    assert_eq!(alg.class_of("svc-b").as_deref(), Some("land"));
}

#[test]
fn getters_return_copies() {
    let alg = LoadBasedAlg::default();
    let mut p = alg.load_percents();
    p.insert("land".into(), 99);
    let mut m = alg.requestor_map();
    m.clear();
    assert_eq!(alg.load_percents()["land"], 40);
    assert_eq!(alg.requestor_map().len(), 9);
}

#[test]
fn rebalance_knobs_can_be_set() {
    let mut alg = LoadBasedAlg::default();
    assert!(!alg.rebalancing_enabled());
    alg.set_rebalance_threshold(20);
    assert!(alg.config().rebalancing_enabled());
    assert!(alg.rebalancing_enabled());
    alg.set_rebalance_min_duration(Duration::ZERO);
    assert!(!alg.config().rebalancing_enabled());
    alg.set_rebalance_min_duration(secs(30));
    assert_eq!(alg.config().rebalance_min_duration, secs(30));
    alg.set_rebalance_threshold(-5);
    assert!(!alg.config().rebalancing_enabled());
}

// ---------------------------------------------------------------------------------------------
// requestor -> class
// ---------------------------------------------------------------------------------------------

#[test]
fn default_requestor_mapping() {
    let alg = LoadBasedAlg::default();
    assert_eq!(alg.class_of("land_team").as_deref(), Some("land"));
    assert_eq!(alg.class_of("CI-nightly").as_deref(), Some("regression"));
    assert_eq!(alg.class_of("jenkins42").as_deref(), Some("ktf"));
    assert_eq!(alg.class_of("tryout").as_deref(), Some("tryout"));
    // Matching is a search, not a whole-string match (like Go's regexp.Match).
    assert_eq!(alg.class_of("my-diff-tool").as_deref(), Some("diff"));
    // No pattern matches: the class with the smallest percent.
    assert_eq!(alg.class_of("someone-else").as_deref(), Some("unknown"));
    assert_eq!(alg.class_of("").as_deref(), Some("unknown"));
}

#[test]
fn overlapping_patterns_resolve_in_sorted_key_order() {
    let mut alg = alg_for(&[("x", 50), ("y", 50)]);
    let map: BTreeMap<String, String> = [
        ("ab.*".to_owned(), "y".to_owned()),
        ("a.*".to_owned(), "x".to_owned()),
    ]
    .into();
    alg.set_requestor_map(map).unwrap();
    // Both match; "a.*" sorts before "ab.*".
    for _ in 0..10 {
        assert_eq!(alg.class_of("abc").as_deref(), Some("x"));
    }
}

#[test]
fn unconfigured_class_falls_back_to_smallest_percent_class() {
    let mut alg = alg_for(&[("big", 60), ("mid", 20), ("zed", 10), ("alpha", 10)]);
    let map: BTreeMap<String, String> = [("^ghost".to_owned(), "no-such-class".to_owned())].into();
    alg.set_requestor_map(map).unwrap();
    // "ghost" names a class with no percent; "nobody" matches nothing. Both land in the smallest
    // class; alpha and zed tie at 10 % and alpha wins by name.
    assert_eq!(alg.class_of("ghost-1").as_deref(), Some("alpha"));
    assert_eq!(alg.class_of("nobody").as_deref(), Some("alpha"));

    // And such jobs are scheduled under that class.
    let jobs = vec![job("j", "nobody", 0, 5)];
    let d = alg.schedule(Duration::ZERO, 10, 10, &jobs);
    assert_eq!(d.start.len(), 5);
    let alpha = alg
        .last_stats()
        .iter()
        .find(|s| s.class == "alpha")
        .unwrap();
    assert_eq!(alpha.starting, 5);
}

#[test]
fn zero_percent_class_is_never_scheduled() {
    let mut alg = alg_for(&[("work", 100), ("banned", 0)]);
    assert_eq!(alg.class_of("banned"), None);
    assert_eq!(alg.class_of("work").as_deref(), Some("work"));

    // Only the 0 % class has work: nothing starts even though every worker is idle.
    let only_banned = vec![job("b1", "banned", 0, 50)];
    let d = alg.schedule(Duration::ZERO, 20, 20, &only_banned);
    assert!(d.start.is_empty() && d.stop.is_empty());

    // Mixed: all idle workers go to the other class, none to the banned one.
    let mixed = vec![job("b1", "banned", 3, 50), job("w1", "work", 0, 50)];
    let d = alg.schedule(Duration::ZERO, 20, 17, &mixed);
    check(&d, &mixed, 17);
    assert_eq!(d.start.len(), 17);
    assert!(d.start.iter().all(|(j, _)| j == "w1"));
    let banned = alg
        .last_stats()
        .iter()
        .find(|s| s.class == "banned")
        .unwrap();
    assert_eq!(
        (banned.starting, banned.running, banned.waiting),
        (0, 3, 50)
    );
}

#[test]
fn unmatched_requestors_are_ignored_when_smallest_class_is_zero_percent() {
    let mut alg = alg_for(&[("work", 100), ("nothing", 0)]);
    assert_eq!(alg.class_of("stranger"), None);
    let jobs = vec![job("s", "stranger", 0, 10)];
    assert!(alg.schedule(Duration::ZERO, 10, 10, &jobs).start.is_empty());
}

// ---------------------------------------------------------------------------------------------
// targets and allocation
// ---------------------------------------------------------------------------------------------

#[test]
fn targets_for_ten_workers_with_default_percents() {
    let mut alg = LoadBasedAlg::default();
    alg.schedule(Duration::ZERO, 10, 10, &[]);
    let targets: BTreeMap<&str, usize> = alg
        .last_stats()
        .iter()
        .map(|s| (s.class.as_str(), s.target))
        .collect();
    // floor(10 * p / 100) for all but land: diff 2, regression 1, sandbox 1, the rest 0;
    // land gets the remaining 6.
    let expected: BTreeMap<&str, usize> = [
        ("land", 6),
        ("diff", 2),
        ("regression", 1),
        ("sandbox", 1),
        ("ktf", 0),
        ("coverage", 0),
        ("tryout", 0),
        ("unknown", 0),
    ]
    .into();
    assert_eq!(targets, expected);
    assert_eq!(targets.values().sum::<usize>(), 10);
}

#[test]
fn a_single_busy_class_gets_every_idle_worker() {
    let mut alg = LoadBasedAlg::default();
    // sandbox (10 %) is the only class with work; it borrows everyone else's share.
    let jobs = vec![job("s1", "sandbox-x", 10, 500)];
    let d = alg.schedule(Duration::ZERO, 100, 90, &jobs);
    check(&d, &jobs, 90);
    assert_eq!(d.start.len(), 90);

    // Fewer waiting tasks than idle workers: all of them start, no more.
    let jobs = vec![job("s1", "sandbox-x", 0, 7)];
    let d = alg.schedule(Duration::ZERO, 100, 100, &jobs);
    check(&d, &jobs, 100);
    assert_eq!(d.start.len(), 7);
}

#[test]
fn two_classes_share_idle_workers_by_entitlement() {
    let entries = [("a", 60), ("b", 40)];
    // All idle, plenty waiting: 60 / 40.
    let got = run_once(
        &entries,
        100,
        &[("a", 60, 0, 1000, 3), ("b", 40, 0, 1000, 3)],
    );
    assert_eq!(got, [60, 40]);
    // a already runs 50 of its 60: its shortfall is 10, b's is 40.
    let got = run_once(
        &entries,
        100,
        &[("a", 60, 50, 1000, 3), ("b", 40, 0, 1000, 3)],
    );
    assert_eq!(got, [10, 40]);
    // Only 25 of those 50 workers idle (the others are, say, being set up): the shortfalls
    // 10:40 become 20 % / 80 % -> 5 and 20.
    let mut alg = alg_for(&entries);
    let specs = [("a", 60, 50, 1000, 3), ("b", 40, 0, 1000, 3)];
    let jobs = jobs_from(&specs);
    let d = alg.schedule(Duration::ZERO, 100, 25, &jobs);
    check(&d, &jobs, 25);
    let counts = per_class(&alg);
    assert_eq!((starts_of(&counts, "a"), starts_of(&counts, "b")), (5, 20));
}

#[test]
fn a_class_without_waiting_tasks_lends_its_share() {
    // c has nothing to do, so its 20 workers are lent to a and b in proportion 50:30.
    let specs = [
        ("a", 50, 0, 1000, 4),
        ("b", 30, 0, 1000, 4),
        ("c", 20, 0, 0, 0),
    ];
    let got = run_once(&entries_of(&specs), 100, &specs);
    assert_eq!(got.iter().sum::<usize>(), 100);
    // entitlements 50 and 30, then the 20 lent workers: a floor(20*50/80) = 12, b 7, and the
    // last (rounding) worker goes to the largest class.
    assert_eq!(got, [63, 37, 0]);
}

#[test]
fn loans_account_for_workers_already_borrowed() {
    // a (50 %) already borrows 10 workers beyond its target; b (30 %) is 10 short; c (20 %) has
    // nothing to do. b first gets its 10 by entitlement. The pool of lent workers is then the
    // 10 idle plus the 10 a borrows: a's part floor(20*50/80) = 12 minus the 10 it has -> 2,
    // b's part floor(20*30/80) = 7. The last (rounding) worker goes to the largest class.
    // Splitting only the 10 idle workers 50:30 would have given a 6 more.
    let specs = [
        ("a", 50, 60, 1000, 2),
        ("b", 30, 20, 1000, 2),
        ("c", 20, 0, 0, 0),
    ];
    let got = run_once(&entries_of(&specs), 100, &specs);
    assert_eq!(got, [3, 17, 0]);
}

#[test]
fn never_more_starts_than_idle_workers() {
    let specs = [("a", 50, 3, 1000, 5), ("b", 50, 0, 1000, 5)];
    for idle in [0usize, 1, 2, 7, 50, 97] {
        let mut alg = alg_for(&entries_of(&specs));
        let jobs = jobs_from(&specs);
        let d = alg.schedule(Duration::ZERO, 100, idle, &jobs);
        check(&d, &jobs, idle);
        assert_eq!(d.start.len(), idle, "idle {idle}");
    }
    // num_idle larger than num_workers is clamped.
    let mut alg = alg_for(&entries_of(&specs));
    let jobs = jobs_from(&specs);
    let d = alg.schedule(Duration::ZERO, 10, 500, &jobs);
    assert_eq!(d.start.len(), 10);
    // No workers at all: nothing happens.
    let d = alg.schedule(Duration::ZERO, 0, 0, &jobs);
    assert_eq!(d, Decision::default());
}

#[test]
fn no_task_is_started_twice_even_with_repeated_input() {
    let mut alg = alg_for(&[("a", 100)]);
    let mut j1 = job("j1", "a", 0, 0);
    j1.waiting = vec!["t1".into(), "t1".into(), "t2".into()];
    j1.waiting_count = 3;
    // The same job listed twice.
    let j1_again = j1.clone();
    let jobs = vec![j1, j1_again];
    let d = alg.schedule(Duration::ZERO, 10, 10, &jobs);
    check(&d, &jobs, 10);
    let mut got: Vec<&str> = d.start.iter().map(|(_, t)| t.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, ["t1", "t2"]);
}

#[test]
fn tasks_are_picked_round_robin_from_least_loaded_jobs() {
    let mut alg = alg_for(&[("a", 100)]);
    let jobs = vec![
        job("j1", "a", 2, 5),
        job("j2", "a", 0, 5),
        job("j3", "a", 1, 5),
        job("j4", "a", 0, 1),
        job("j5", "a", 0, 0),
    ];
    let d = alg.schedule(Duration::ZERO, 20, 7, &jobs);
    check(&d, &jobs, 7);
    let got: Vec<(&str, &str)> = d
        .start
        .iter()
        .map(|(j, t)| (j.as_str(), t.as_str()))
        .collect();
    // Jobs with 0 running first (j2, then j4 which then runs dry), then those at 1 (j3, which
    // was already there, then j2 which just got there), then at 2 (j1, j3, j2), ...
    assert_eq!(
        got,
        [
            ("j2", "w0"),
            ("j4", "w0"),
            ("j3", "w0"),
            ("j2", "w1"),
            ("j1", "w0"),
            ("j3", "w1"),
            ("j2", "w2"),
        ]
    );
}

#[test]
fn waiting_tasks_of_a_job_start_in_the_given_order() {
    let mut alg = alg_for(&[("a", 100)]);
    let mut j = job("j", "a", 0, 0);
    j.waiting = vec!["long".into(), "medium".into(), "short".into()];
    j.waiting_count = 3;
    let jobs = vec![j];
    let d = alg.schedule(Duration::ZERO, 2, 2, &jobs);
    assert_eq!(
        d.start,
        [
            ("j".to_owned(), "long".to_owned()),
            ("j".to_owned(), "medium".to_owned())
        ]
    );
}

#[test]
fn stats_describe_the_last_step() {
    let mut alg = alg_for(&[("a", 60), ("b", 40)]);
    assert!(alg.last_stats().is_empty());
    let jobs = vec![job("a1", "a", 10, 100), job("b1", "b", 0, 5)];
    alg.schedule(Duration::ZERO, 50, 40, &jobs);
    let stats = alg.last_stats();
    assert_eq!(
        stats[0],
        ClassStats {
            class: "a".into(),
            target: 30,
            running: 10,
            waiting: 65,
            starting: 35,
            stopping: 0,
            target_pct: 60,
            actual_pct: 90,
        }
    );
    assert_eq!(
        stats[1],
        ClassStats {
            class: "b".into(),
            target: 20,
            running: 0,
            waiting: 0,
            starting: 5,
            stopping: 0,
            target_pct: 40,
            actual_pct: 10,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// scenarios modelled on the worked examples in Scoot's scheduler README and tests
// ---------------------------------------------------------------------------------------------

#[test]
fn scenario_two_entitlement_rounds() {
    // 1000 workers, 710 busy. Round one splits the 290 idle workers over the shortfalls of c0
    // (100), c2 (200) and c3 (50); c2 runs out of waiting tasks at 150, so a second round hands
    // the rest to c0 and c3. c1 and c4 are over target and the 0 % class c5 is ignored.
    let specs = [
        ("c0", 30, 200, 290, 10),
        ("c1", 25, 300, 230, 50),
        ("c2", 20, 0, 150, 20),
        ("c3", 15, 100, 150, 3),
        ("c4", 10, 110, 90, 2),
        ("c5", 0, 0, 328, 1),
    ];
    let got = run_once(&entries_of(&specs), 1000, &specs);
    assert_eq!(got, [94, 0, 150, 46, 0, 0]);
}

#[test]
fn scenario_entitlement_then_loans() {
    // 1000 workers, 290 idle. c0 and c3 fill their shortfalls from their few waiting tasks (10
    // and 50); c2 has nothing to do. The remaining 230 workers are lent to c1 and c4, which
    // already borrow 50 and 10: of the pool of 290 lent workers c1's part is
    // floor(290*25/35) = 207 and c4's is floor(290*10/35) = 82.
    let specs = [
        ("c0", 30, 200, 10, 2),
        ("c1", 25, 300, 230, 15),
        ("c2", 20, 0, 0, 0),
        ("c3", 15, 100, 50, 10),
        ("c4", 10, 110, 90, 3),
    ];
    let got = run_once(&entries_of(&specs), 1000, &specs);
    assert_eq!(got, [10, 158, 0, 50, 72]);
    // c1 ends at 458 (target 250 + 208 lent), c4 at 182 (100 + 82): the lent 290 split 25:10
    // up to rounding.
}

#[test]
fn scenario_idle_classes_become_active() {
    // c4 hogs 700 workers (target 100); the other classes just got work. Every idle worker goes
    // to them by shortfall and c4 gets nothing more.
    let specs = [
        ("c0", 30, 0, 300, 30),
        ("c1", 25, 0, 230, 10),
        ("c2", 20, 0, 400, 40),
        ("c3", 15, 0, 650, 13),
        ("c4", 10, 700, 800, 40),
    ];
    let got = run_once(&entries_of(&specs), 1000, &specs);
    assert_eq!(got, [105, 81, 66, 48, 0]);
}

#[test]
fn scenario_percents_needing_normalisation() {
    // The percents add up to 80 and are scaled: c1 floor(2500/80) = 31, c2 18, c4 12, and c0,
    // the largest, absorbs the rest (39). The 0 % class c3 occupies 100 workers but is otherwise
    // ignored.
    let specs = [
        ("c0", 30, 200, 100, 30),
        ("c1", 25, 300, 50, 10),
        ("c2", 15, 0, 200, 40),
        ("c3", 0, 100, 300, 13),
        ("c4", 10, 110, 500, 40),
    ];
    let mut alg = alg_for(&entries_of(&specs));
    assert_eq!(
        alg.load_percents(),
        percents(&[("c0", 39), ("c1", 31), ("c2", 18), ("c3", 0), ("c4", 12)])
    );
    let counts = step(&mut alg, Duration::ZERO, 1000, &specs);
    let got: Vec<usize> = specs.iter().map(|s| starts_of(&counts, s.0)).collect();
    assert_eq!(got, [100, 10, 172, 0, 8]);
}

#[test]
fn scenario_staging_with_two_active_classes() {
    // An older set of Scoot percents; only regression and tryout have work and both are already
    // above target (regression far above).
    let mut specs = [
        ("land", 48, 0, 0, 0),
        ("diff", 25, 0, 0, 0),
        ("sandbox", 10, 0, 0, 0),
        ("regression", 9, 3111, 22121, 1),
        ("ktf", 3, 0, 0, 0),
        ("coverage", 2, 0, 0, 0),
        ("tryout", 2, 146, 24099, 1),
        ("unknown", 1, 0, 0, 0),
    ];
    // 3270 workers, 13 idle: regression (target 294) and tryout (target 65) both borrow. Of the
    // pool of 2911 lent workers (13 idle + 2817 + 81 borrowed) tryout's part is
    // floor(2911*2/11) = 529, well above the 81 it has, while regression's part (2381) is below
    // the 2817 it already has. So tryout gets all 13.
    let got = run_once(&entries_of(&specs), 3270, &specs);
    assert_eq!(got, [0, 0, 0, 0, 0, 0, 13, 0]);

    // 4000 workers and a small tryout job: its 500 tasks all fit, regression takes the rest.
    specs[6] = ("tryout", 2, 70, 500, 1);
    let got = run_once(&entries_of(&specs), 4000, &specs);
    assert_eq!(got, [0, 0, 0, 319, 0, 0, 500, 0]);
}

#[test]
fn large_input_completes() {
    let classes = ["land", "diff", "sandbox", "regression", "ktf"];
    let jobs: Vec<JobView> = (0..1000)
        .map(|j| {
            job(
                &format!("job{j}"),
                &format!("{}-{j}", classes[j % 5]),
                0,
                100,
            )
        })
        .collect();
    let mut alg = LoadBasedAlg::default();
    let d = alg.schedule(Duration::ZERO, 100, 100, &jobs);
    check(&d, &jobs, 100);
    assert_eq!(d.start.len(), 100);
    // Every job has 0 running tasks, so no job gets a second task before all of its class's
    // jobs have one.
    let distinct: HashSet<&str> = d.start.iter().map(|(j, _)| j.as_str()).collect();
    assert_eq!(distinct.len(), 100);

    // A bigger cluster: 10,000 idle workers over 100,000 waiting tasks.
    let d = alg.schedule(Duration::ZERO, 10_000, 10_000, &jobs);
    check(&d, &jobs, 10_000);
    assert_eq!(d.start.len(), 10_000);
}

// ---------------------------------------------------------------------------------------------
// rebalancing
// ---------------------------------------------------------------------------------------------

/// 10 workers, all busy: a (70 %) runs 2, b (20 %) runs 4 and c (10 %) runs 4, all with work
/// waiting. Spread: a is 50 points under, c 30 over -> 80.
const SKEWED: [ClassSpec; 3] = [
    ("a", 70, 2, 20, 3),
    ("b", 20, 4, 10, 2),
    ("c", 10, 4, 30, 4),
];

fn skewed_alg(threshold: i32, min: Duration) -> LoadBasedAlg {
    let mut alg = alg_for(&entries_of(&SKEWED));
    alg.set_rebalance_threshold(threshold);
    alg.set_rebalance_min_duration(min);
    alg
}

#[test]
fn rebalancing_is_off_by_default() {
    let mut alg = alg_for(&entries_of(&SKEWED));
    for t in [0, 300, 3600, 86_400] {
        let counts = step(&mut alg, secs(t), 10, &SKEWED);
        assert!(counts.values().all(|c| c.1 == 0), "stopped tasks at {t}s");
        assert_eq!(alg.rebalance_exceeded_since(), None);
    }
    // Threshold set but duration 0: still off.
    let mut alg = skewed_alg(10, Duration::ZERO);
    for t in [0, 300, 3600] {
        let counts = step(&mut alg, secs(t), 10, &SKEWED);
        assert!(counts.values().all(|c| c.1 == 0));
    }
}

#[test]
fn rebalancing_waits_for_the_minimum_duration() {
    let mut alg = skewed_alg(50, secs(60));
    // First sighting: start the clock, stop nothing.
    let counts = step(&mut alg, secs(1000), 10, &SKEWED);
    assert!(counts.values().all(|c| c.1 == 0));
    assert_eq!(alg.rebalance_exceeded_since(), Some(secs(1000)));
    // Exactly the minimum duration is not enough.
    let counts = step(&mut alg, secs(1060), 10, &SKEWED);
    assert!(counts.values().all(|c| c.1 == 0));
    // Past it: b and c are cut back to their targets (2 and 1) and a gets the 5 freed workers.
    let counts = step(&mut alg, secs(1061), 10, &SKEWED);
    assert_eq!(
        (
            starts_of(&counts, "a"),
            stops_of(&counts, "b"),
            stops_of(&counts, "c")
        ),
        (5, 2, 3)
    );
    assert_eq!((starts_of(&counts, "b"), starts_of(&counts, "c")), (0, 0));
    // The clock restarts after a rebalance: the same (still reported) skew does not immediately
    // trigger another one.
    assert_eq!(alg.rebalance_exceeded_since(), None);
    let counts = step(&mut alg, secs(1062), 10, &SKEWED);
    assert!(counts.values().all(|c| c.1 == 0));
    assert_eq!(alg.rebalance_exceeded_since(), Some(secs(1062)));
}

#[test]
fn rebalancing_stops_the_most_recently_started_tasks() {
    let mut alg = alg_for(&[("a", 50), ("b", 50)]);
    alg.set_rebalance_threshold(10);
    alg.set_rebalance_min_duration(secs(10));
    let mut b1 = job("b1", "b", 3, 3);
    b1.running = [("old", 5), ("newest", 90), ("mid", 50)]
        .iter()
        .map(|(t, s)| RunningTask {
            task_id: (*t).into(),
            started_at: secs(*s),
        })
        .collect();
    let mut b2 = job("b2", "b", 3, 3);
    b2.running = [("x", 10), ("y", 70), ("z", 20)]
        .iter()
        .map(|(t, s)| RunningTask {
            task_id: (*t).into(),
            started_at: secs(*s),
        })
        .collect();
    // 8 workers: b runs 6 (target 4), a runs 2 (target 4) with work waiting.
    let a1 = job("a1", "a", 2, 10);
    let jobs = vec![a1, b1, b2];
    assert!(alg.schedule(secs(100), 8, 0, &jobs).stop.is_empty());
    let d = alg.schedule(secs(200), 8, 0, &jobs);
    check(&d, &jobs, 0);
    assert_eq!(
        d.stop,
        [
            ("b1".to_owned(), "newest".to_owned()),
            ("b2".to_owned(), "y".to_owned())
        ]
    );
    assert_eq!(d.start.len(), 2);
    assert!(d.start.iter().all(|(j, _)| j == "a1"));
}

#[test]
fn rebalance_timer_resets_when_the_spread_falls_back() {
    let mut alg = skewed_alg(50, secs(60));
    step(&mut alg, secs(0), 10, &SKEWED);
    assert_eq!(alg.rebalance_exceeded_since(), Some(secs(0)));
    // Balanced for a moment: a 7, b 2, c 1.
    let balanced = [
        ("a", 70, 7, 20, 3),
        ("b", 20, 2, 10, 2),
        ("c", 10, 1, 30, 4),
    ];
    let counts = step(&mut alg, secs(30), 10, &balanced);
    assert!(counts.values().all(|c| c.1 == 0));
    assert_eq!(alg.rebalance_exceeded_since(), None);
    // Skewed again: the clock starts over, so 70 s after the first sighting is too early.
    let counts = step(&mut alg, secs(40), 10, &SKEWED);
    assert!(counts.values().all(|c| c.1 == 0));
    let counts = step(&mut alg, secs(70), 10, &SKEWED);
    assert!(counts.values().all(|c| c.1 == 0));
    let counts = step(&mut alg, secs(101), 10, &SKEWED);
    assert_eq!(stops_of(&counts, "b") + stops_of(&counts, "c"), 5);
}

#[test]
fn spread_below_threshold_never_rebalances() {
    // Spread 80 does not exceed 80.
    let mut alg = skewed_alg(80, secs(1));
    for t in [0, 10, 100, 1000] {
        let counts = step(&mut alg, secs(t), 10, &SKEWED);
        assert!(counts.values().all(|c| c.1 == 0));
    }
    assert_eq!(alg.rebalance_exceeded_since(), None);
}

#[test]
fn rebalancing_needs_waiting_tasks() {
    // b is far over target but nobody is waiting: nothing to gain from stopping its tasks.
    let specs = [("a", 80, 0, 0, 0), ("b", 20, 10, 0, 2)];
    let mut alg = alg_for(&entries_of(&specs));
    alg.set_rebalance_threshold(1);
    alg.set_rebalance_min_duration(secs(1));
    for t in [0, 10, 100] {
        let counts = step(&mut alg, secs(t), 10, &specs);
        assert!(counts.values().all(|c| c.1 == 0));
    }
}

#[test]
fn rebalancing_keeps_tasks_a_class_would_get_back_on_loan() {
    // 10 workers: b (50 %) runs 8 against a target of 5, a (30 %) runs 0 with work waiting, c
    // (20 %) has nothing to do. Rebalancing frees 3 of b's workers; a takes its 3, and c's
    // 2 unused workers go back to b as a loan... so b only has to give up 1 task, not 3.
    let specs = [
        ("a", 30, 0, 100, 2),
        ("b", 50, 8, 100, 2),
        ("c", 20, 0, 0, 0),
    ];
    let mut alg = alg_for(&entries_of(&specs));
    alg.set_rebalance_threshold(20);
    alg.set_rebalance_min_duration(secs(5));
    let counts = step(&mut alg, secs(0), 10, &specs);
    assert_eq!(starts_of(&counts, "a"), 2);
    assert_eq!(stops_of(&counts, "b"), 0);
    let counts = step(&mut alg, secs(10), 10, &specs);
    assert_eq!(starts_of(&counts, "a"), 3);
    assert_eq!(starts_of(&counts, "b"), 0);
    assert_eq!(stops_of(&counts, "b"), 1);
}

#[test]
fn rebalancing_large_cluster() {
    // 10,000 workers, 5,264 idle; c6 and c7 hold far more than their 3 % and 2 %. After the
    // rebalance every class sits exactly on its target.
    let specs = [
        ("c0", 30, 166, 14220, 300),
        ("c1", 25, 101, 9401, 100),
        ("c2", 16, 420, 16542, 400),
        ("c3", 14, 14, 104_194, 13),
        ("c4", 6, 404, 15944, 400),
        ("c5", 4, 42, 11136, 40),
        ("c6", 3, 977, 209_145, 30),
        ("c7", 2, 2612, 416_781, 40),
    ];
    let mut alg = alg_for(&entries_of(&specs));
    alg.set_rebalance_threshold(50);
    alg.set_rebalance_min_duration(secs(60));
    step(&mut alg, secs(0), 10_000, &specs);
    let counts = step(&mut alg, secs(120), 10_000, &specs);
    let got: Vec<(usize, usize)> = specs.iter().map(|s| counts[s.0]).collect();
    assert_eq!(
        got,
        [
            (2834, 0),
            (2399, 0),
            (1180, 0),
            (1386, 0),
            (196, 0),
            (358, 0),
            (0, 677),
            (0, 2412),
        ]
    );
}

#[test]
fn random_inputs_use_every_idle_worker_they_can() {
    // A tiny deterministic generator (no extra dependencies).
    let mut seed: u64 = 0x5eed_1234;
    let mut next = |bound: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(seed >> 33).unwrap() % bound.max(1)
    };
    let names = ["c0", "c1", "c2", "c3", "c4", "c5"];
    for round in 0..300 {
        let nclasses = 1 + next(names.len());
        let entries: Vec<(&str, i32)> = names[..nclasses]
            .iter()
            .map(|n| (*n, i32::try_from(next(40)).unwrap()))
            .collect();
        if entries.iter().all(|e| e.1 == 0) {
            continue;
        }
        let workers = 1 + next(300);
        let mut budget = workers;
        let mut jobs = Vec::new();
        for (c, _) in &entries {
            for j in 0..next(4) {
                let running = next(budget + 1);
                budget -= running;
                jobs.push(job(&format!("{c}-{j}"), c, running, next(120)));
            }
        }
        let idle = budget;
        let mut alg = alg_for(&entries);
        let d = alg.schedule(Duration::ZERO, workers, idle, &jobs);
        check(&d, &jobs, idle);
        assert!(d.stop.is_empty());
        let schedulable_waiting: usize = jobs
            .iter()
            .filter(|j| alg.class_of(&j.requestor).is_some())
            .map(|j| j.waiting_count)
            .sum();
        assert_eq!(
            d.start.len(),
            idle.min(schedulable_waiting),
            "round {round}: {entries:?}, {workers} workers, {idle} idle"
        );

        // The same input with eager rebalancing: invariants still hold, and no class is cut
        // below its target.
        alg.set_rebalance_threshold(1);
        alg.set_rebalance_min_duration(secs(1));
        alg.schedule(Duration::ZERO, workers, idle, &jobs);
        let d = alg.schedule(secs(2), workers, idle, &jobs);
        check(&d, &jobs, idle);
        for s in alg.last_stats() {
            if s.stopping > 0 {
                assert!(s.running - s.stopping >= s.target, "round {round}: {s:?}");
                assert_eq!(s.starting, 0, "round {round}: {s:?}");
            }
        }
    }
}

#[test]
fn a_job_listing_only_its_first_waiting_tasks_counts_them_all() {
    // Class b has 10 tasks waiting, of which its job lists 2; with two classes of equal share
    // and 4 idle workers, b's count (not its list) decides its entitlement.
    let mut alg = alg_for(&[("a", 50), ("b", 50)]);
    let a = job("a1", "a", 0, 10);
    let mut b = job("b1", "b", 0, 10);
    b.waiting.truncate(2);
    let d = alg.schedule(Duration::ZERO, 4, 4, &[a, b]);
    let started_b = d.start.iter().filter(|(j, _)| j == "b1").count();
    assert_eq!(started_b, 2, "{d:?}");
    assert_eq!(d.start.len(), 4, "a takes the workers b cannot fill: {d:?}");
    let stats = alg.last_stats();
    let b_stats = stats.iter().find(|c| c.class == "b").unwrap();
    assert_eq!(b_stats.waiting, 8, "{stats:?}");
}
