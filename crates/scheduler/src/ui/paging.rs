//! Pages of a long list: `?page=N` (from 1), [`PAGE_SIZE`] rows each.

use std::ops::Range;

use serde::Serialize;

use super::format::query_string;

/// Rows on one page of jobs, tasks or operations.
pub const PAGE_SIZE: usize = 50;

/// The `page` query parameter was not a page number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("page must be a whole number from 1 up, not {0:?}")]
pub struct BadPage(pub String);

/// Parses `?page=`: absent or empty is page 1, and so is 0; a number too large for the machine
/// is simply a page far past the end (shown empty), not an error.
pub fn parse_page(raw: Option<&str>) -> Result<u64, BadPage> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() {
        return Ok(1);
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadPage(raw.chars().take(40).collect()));
    }
    Ok(raw.parse::<u64>().unwrap_or(u64::MAX).max(1))
}

/// Page `page` of `size` rows: which rows it holds (saturating far past any list).
pub fn rows(page: u64, size: usize) -> Range<usize> {
    let start = usize::try_from(page.saturating_sub(1))
        .unwrap_or(usize::MAX)
        .saturating_mul(size);
    start..start.saturating_add(size)
}

/// What a page's navigation shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pager {
    pub page: u64,
    pub last: u64,
    pub total: usize,
    /// The rows shown, counted from 1 (`first > shown_last` when the page is empty).
    pub first: usize,
    pub shown_last: usize,
    pub prev_url: Option<String>,
    pub next_url: Option<String>,
    pub last_url: String,
}

impl Pager {
    /// Navigation for page `page` of `total` rows at `path`, keeping the other query
    /// parameters in `keep`.
    pub fn new(path: &str, keep: &[(&str, &str)], page: u64, total: usize) -> Pager {
        let last = u64::try_from(total.div_ceil(PAGE_SIZE))
            .unwrap_or(u64::MAX)
            .max(1);
        let url = |n: u64| {
            let number = n.to_string();
            let mut params = keep.to_vec();
            if n > 1 {
                params.push(("page", &number));
            }
            format!("{path}{}", query_string(&params))
        };
        let range = rows(page, PAGE_SIZE);
        Pager {
            page,
            last,
            total,
            first: range.start.saturating_add(1),
            shown_last: range.end.min(total),
            // Past the end, "previous" leads back to the last page that has rows.
            prev_url: (page > 1).then(|| url((page - 1).min(last))),
            next_url: (page < last).then(|| url(page + 1)),
            last_url: url(last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbers_parse_leniently_but_not_blindly() {
        assert_eq!(parse_page(None), Ok(1));
        assert_eq!(parse_page(Some("")), Ok(1));
        assert_eq!(parse_page(Some("0")), Ok(1));
        assert_eq!(parse_page(Some("7")), Ok(7));
        assert_eq!(
            parse_page(Some("99999999999999999999999999999")),
            Ok(u64::MAX)
        );
        assert!(parse_page(Some("-1")).is_err());
        assert!(parse_page(Some("two")).is_err());
        assert!(parse_page(Some("1e3")).is_err());
    }

    #[test]
    fn rows_saturate_far_past_the_end() {
        assert_eq!(rows(1, 50), 0..50);
        assert_eq!(rows(3, 50), 100..150);
        let far = rows(u64::MAX, 50);
        assert_eq!(far.start, usize::MAX);
        assert_eq!(far.end, usize::MAX);
    }

    #[test]
    fn the_pager_links_neighbours_and_keeps_filters() {
        let keep = [("status", "running"), ("requestor", "a b&c")];
        let pager = Pager::new("/ui/", &keep, 2, 120);
        assert_eq!(pager.last, 3);
        assert_eq!((pager.first, pager.shown_last), (51, 100));
        assert_eq!(
            pager.prev_url.as_deref(),
            Some("/ui/?status=running&requestor=a%20b%26c")
        );
        assert_eq!(
            pager.next_url.as_deref(),
            Some("/ui/?status=running&requestor=a%20b%26c&page=3")
        );
        let empty = Pager::new("/ui/", &[], 1, 0);
        assert_eq!(
            (empty.last, empty.prev_url, empty.next_url),
            (1, None, None)
        );
        let past = Pager::new("/ui/", &[], u64::MAX, 120);
        assert_eq!(past.prev_url.as_deref(), Some("/ui/?page=3"));
        assert_eq!(past.next_url, None);
        assert!(
            past.first > past.shown_last,
            "a page past the end shows rows"
        );
    }
}
