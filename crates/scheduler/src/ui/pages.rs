//! Renders the pages from the templates in `templates/`, compiled into the binary.
//!
//! Why minijinja rather than askama: the templates stay plain Jinja/HTML files, there is no
//! proc-macro build step (this crate builds on two-core machines), its only dependency is
//! serde, which we already use, and a page's main section alone (what the refresh fetches) is
//! ordinary Jinja (`fragment` in base.html). Escaping is not left to file names: every template
//! is HTML-escaped, and undefined variables are errors, so a typo in a template fails the unit
//! tests instead of rendering blank.

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, context};
use serde::Serialize;

use super::operations::OperationsView;
use super::views::{JobView, JobsView, WorkersView};

const TEMPLATES: [(&str, &str); 7] = [
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("jobs.html", include_str!("templates/jobs.html")),
    ("job.html", include_str!("templates/job.html")),
    ("workers.html", include_str!("templates/workers.html")),
    ("operations.html", include_str!("templates/operations.html")),
    ("error.html", include_str!("templates/error.html")),
];

#[derive(Debug, thiserror::Error)]
#[error("page template: {0:#}")]
pub struct RenderError(#[from] minijinja::Error);

/// What every page says around its main section.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    /// Which navigation entry is current: `jobs`, `workers`, `operations` or empty.
    pub section: &'static str,
    pub title: String,
    /// Only the main section (for the page's refresh).
    pub fragment: bool,
    /// Whether admin actions need a token, so the page asks for one.
    pub tokens: bool,
    /// When the data was taken.
    pub taken: String,
}

/// The compiled templates.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub fn new() -> Result<Pages, RenderError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(Pages { env })
    }

    fn render(
        &self,
        template: &str,
        frame: &Frame,
        view: impl Serialize,
    ) -> Result<String, RenderError> {
        let page = self.env.get_template(template)?;
        Ok(page.render(context! {
            ..minijinja::Value::from(Serde(frame)),
            ..context! { view => Serde(view) },
        })?)
    }

    pub fn jobs(&self, frame: &Frame, view: &JobsView) -> Result<String, RenderError> {
        self.render("jobs.html", frame, view)
    }

    pub fn job(&self, frame: &Frame, view: &JobView) -> Result<String, RenderError> {
        self.render("job.html", frame, view)
    }

    pub fn workers(&self, frame: &Frame, view: &WorkersView) -> Result<String, RenderError> {
        self.render("workers.html", frame, view)
    }

    pub fn operations(&self, frame: &Frame, view: &OperationsView) -> Result<String, RenderError> {
        self.render("operations.html", frame, view)
    }

    /// A page saying what went wrong (an unknown job, a bad query).
    pub fn error(
        &self,
        frame: &Frame,
        heading: &str,
        message: &str,
    ) -> Result<String, RenderError> {
        let page = self.env.get_template("error.html")?;
        Ok(page.render(context! {
            ..minijinja::Value::from(Serde(frame)),
            ..context! { heading => heading, message => message },
        })?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use scoot_core::RunState;

    use super::*;
    use crate::overview::{
        JobDetail, JobPhase, JobSummary, Overview, RunRecord, TaskOutcome, TaskPhase, TaskView,
        WorkerHealth, WorkerView,
    };
    use crate::ui::views::{self, JobFilter, StatusFilter};

    const EVIL: &str = "<script>document.title='pwned'</script>";

    fn frame(fragment: bool) -> Frame {
        Frame {
            section: "jobs",
            title: EVIL.into(),
            fragment,
            tokens: true,
            taken: "now".into(),
        }
    }

    fn evil_job() -> JobSummary {
        JobSummary {
            id: "job-1".into(),
            tag: EVIL.into(),
            basis: EVIL.into(),
            requestor: EVIL.into(),
            job_type: EVIL.into(),
            priority: 1,
            phase: JobPhase::Running,
            submitted: SystemTime::UNIX_EPOCH,
            finished: None,
            tasks: 1,
            waiting: 0,
            running: 1,
            done: 0,
            failed: 0,
        }
    }

    fn evil_task() -> TaskView {
        TaskView {
            task_id: EVIL.into(),
            argv: format!("sh -c {EVIL}"),
            phase: TaskPhase::Done,
            attempts: 2,
            run: RunRecord {
                node: Some(EVIL.into()),
                started: Some(SystemTime::UNIX_EPOCH),
                ended: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2)),
                outcome: Some(TaskOutcome {
                    state: RunState::Failed,
                    exit_code: 3,
                    error: EVIL.into(),
                }),
                stdout: "http://w/output/0-stdout?a=1&b=\"><script>x</script>".into(),
                stderr: "javascript:alert(1)".into(),
                retried: Some(EVIL.into()),
            },
        }
    }

    /// No markup from the data: every `<` of it arrived escaped.
    fn assert_escaped(html: &str) {
        assert!(
            !html.contains("<script>document"),
            "unescaped script in:\n{html}"
        );
        assert!(!html.contains("<script>x"), "unescaped script in:\n{html}");
        assert!(html.contains("&lt;script&gt;document.title="), "{html}");
        assert!(
            !html.contains("javascript:"),
            "a javascript: link in:\n{html}"
        );
    }

    #[test]
    fn every_page_escapes_what_jobs_and_workers_say() {
        let pages = Pages::new().unwrap();
        let overview = Overview {
            jobs: vec![Arc::new(evil_job())],
            workers: vec![WorkerView {
                id: EVIL.into(),
                health: WorkerHealth::Checking(Some(EVIL.into())),
                offline: false,
                running: Some((EVIL.into(), EVIL.into())),
                platform: vec![EVIL.into()],
            }],
            taken: SystemTime::UNIX_EPOCH,
        };
        let filter = JobFilter {
            status: StatusFilter::All,
            requestor: EVIL.into(),
        };
        let jobs = views::jobs(&overview, &filter, 1);
        let detail = JobDetail {
            summary: Arc::new(evil_job()),
            tasks: vec![evil_task()],
            taken: SystemTime::UNIX_EPOCH,
        };
        for fragment in [false, true] {
            let frame = frame(fragment);
            for html in [
                pages.jobs(&frame, &jobs).unwrap(),
                pages.job(&frame, &views::job(&detail, 1)).unwrap(),
                pages.workers(&frame, &views::workers(&overview)).unwrap(),
                pages.error(&frame, EVIL, EVIL).unwrap(),
            ] {
                assert_escaped(&html);
                assert_eq!(html.contains("<!doctype html>"), !fragment);
                assert_eq!(html.contains("/ui/static/ui.js"), !fragment);
            }
        }
        let job = pages.job(&frame(false), &views::job(&detail, 1)).unwrap();
        // The stdout link survives, its quote escaped inside the attribute; stderr is no link.
        assert!(
            job.contains(
                "href=\"http:&#x2f;&#x2f;w&#x2f;output&#x2f;0-stdout?a=1&amp;b=&quot;&gt;"
            ),
            "{job}"
        );
        assert!(!job.contains(">stderr<"), "{job}");
        assert!(
            job.contains("<span class=\"state bad\">failed</span>"),
            "{job}"
        );
        let workers = pages
            .workers(&frame(false), &views::workers(&overview))
            .unwrap();
        assert!(
            workers.contains("id=\"token\""),
            "no token field: {workers}"
        );
        assert!(workers.contains("data-post=\"&#x2f;admin&#x2f;workers&#x2f;%3Cscript%3E"));
    }

    #[test]
    fn pages_past_the_end_say_so_and_empty_lists_too() {
        let pages = Pages::new().unwrap();
        let overview = Overview {
            jobs: vec![Arc::new(evil_job())],
            workers: Vec::new(),
            taken: SystemTime::UNIX_EPOCH,
        };
        let all = JobFilter {
            status: StatusFilter::All,
            requestor: String::new(),
        };
        let beyond = pages
            .jobs(&frame(true), &views::jobs(&overview, &all, u64::MAX))
            .unwrap();
        assert!(
            beyond.contains("No jobs on page 18446744073709551615"),
            "{beyond}"
        );
        assert!(
            beyond.contains("href=\"&#x2f;ui&#x2f;\">Last page"),
            "{beyond}"
        );
        let none = Overview {
            jobs: Vec::new(),
            ..overview
        };
        let empty = pages
            .jobs(&frame(true), &views::jobs(&none, &all, 1))
            .unwrap();
        assert!(empty.contains("No jobs."), "{empty}");
        let no_workers = pages.workers(&frame(true), &views::workers(&none)).unwrap();
        assert!(no_workers.contains("No workers are known"), "{no_workers}");
    }

    #[test]
    fn the_pages_load_nothing_from_elsewhere() {
        for (name, source) in TEMPLATES {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!source.contains(needle), "{name} refers to {needle}");
            }
        }
        for asset in [super::super::CSS, super::super::JS] {
            assert!(!asset.contains("http"), "an asset refers to another origin");
            assert!(!asset.contains("url("), "an asset loads something");
        }
    }
}
