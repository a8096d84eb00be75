//! A store that is a remote bundlestore: an apiserver's `/bundle/` endpoint, spoken to as Scoot's
//! HTTP store did.
//!
//! * `read`: `GET <base><name>`; 200 → the body, 404 → `None`, 400 → invalid name.
//! * `exists`: `HEAD <base><name>`; 200 → true (false if the response carries an
//!   `x-scoot-expires` date in the past), 404 → false.
//! * `write`: `POST <base><name>` with `Content-Type: text/plain`, `Content-Length` and
//!   `x-scoot-expires: <RFC 1123 date>` (now + [`DEFAULT_TTL`] when no expiry is given).
//!
//! Connection failures, timeouts, cut-off bodies and 5xx answers are retried with exponential
//! backoff (7 tries, 100 ms doubling up to 5 s, by default); 4xx answers are final. Every request
//! has a connect timeout, an idle (read) timeout and an overall timeout. Plain HTTP/1.1 only.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use scoot_security::ClientTls;

use super::{Expiry, Store, StoreError, check_name};

/// The header that carries a blob's expiry, as an RFC 1123 date.
pub const EXPIRES_HEADER: &str = "x-scoot-expires";

/// How long a blob is kept when the writer gives no expiry (Scoot's 180 days).
pub const DEFAULT_TTL: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Retry and timeout settings of an [`HttpStore`].
#[derive(Clone, Debug)]
pub struct HttpStoreOptions {
    /// Attempts per operation, the first included (at least 1).
    pub tries: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub first_backoff: Duration,
    /// Upper bound of the wait between attempts.
    pub max_backoff: Duration,
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed without receiving any bytes while reading a response.
    pub idle_timeout: Duration,
    /// Overall time allowed for a GET or POST, body included (bundles can be large).
    pub transfer_timeout: Duration,
    /// Overall time allowed for a HEAD.
    pub probe_timeout: Duration,
    /// The CA of an `https://` store (`-tls_ca`); a base URL without a scheme is then https.
    pub tls: Option<ClientTls>,
}

impl Default for HttpStoreOptions {
    fn default() -> HttpStoreOptions {
        HttpStoreOptions {
            tries: 7,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            transfer_timeout: Duration::from_secs(30 * 60),
            tls: None,
            probe_timeout: Duration::from_secs(60),
        }
    }
}

/// A remote bundlestore. Cheap to clone (connections are pooled and shared).
#[derive(Clone, Debug)]
pub struct HttpStore {
    client: reqwest::Client,
    base: String,
    options: HttpStoreOptions,
}

impl HttpStore {
    /// A store at `base_url` with the default options. See [`normalize_base_url`] for what
    /// forms of `base_url` are accepted.
    pub fn new(base_url: &str) -> Result<HttpStore, StoreError> {
        HttpStore::with_options(base_url, HttpStoreOptions::default())
    }

    pub fn with_options(
        base_url: &str,
        options: HttpStoreOptions,
    ) -> Result<HttpStore, StoreError> {
        let base = if options.tls.is_some() && !base_url.contains("://") {
            normalize_base_url(base_url)?.replacen("http://", "https://", 1)
        } else {
            normalize_base_url(base_url)?
        };
        let client = scoot_security::http_client(options.tls.as_ref())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.idle_timeout)
            .user_agent(concat!("scoot-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Io(format!("cannot create an HTTP client: {e}")))?;
        Ok(HttpStore {
            client,
            base,
            options,
        })
    }

    /// The normalized base URL, ending in `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url_of(&self, name: &str) -> Result<String, StoreError> {
        check_name(name)?;
        Ok(format!("{}{}", self.base, encode_path_segment(name)))
    }

    /// Runs `attempt` until it is done or the tries are used up, sleeping between attempts.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let tries = self.options.tries.max(1);
        let mut backoff = self.options.first_backoff;
        let mut tried = 0;
        loop {
            tried += 1;
            let reason = match attempt().await {
                Attempt::Done(result) => return result,
                Attempt::Retry(reason) => reason,
            };
            if tried >= tries {
                return Err(StoreError::Io(format!(
                    "{what}: {reason} (gave up after {tried} tries)"
                )));
            }
            tracing::debug!(%what, %reason, try_number = tried, "bundlestore request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(self.options.max_backoff);
        }
    }
}

/// The outcome of one attempt: final, or worth another try.
enum Attempt<T> {
    Done(Result<T, StoreError>),
    Retry(String),
}

/// What went wrong in a response that is not a success, read from its status and (a bounded
/// part of) its body. A 400 to a GET or HEAD can only be about the name; to a POST it may be
/// about the data too, so it is reported as it came.
async fn failure<T>(method: Method, name: &str, response: reqwest::Response) -> Attempt<T> {
    let status = response.status();
    let mut body = response.text().await.unwrap_or_default();
    if body.len() > 300 {
        let mut cut = 300;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push('…');
    }
    let reason = format!("{status}: {}", body.trim());
    if status.is_server_error() {
        Attempt::Retry(reason)
    } else if status == StatusCode::BAD_REQUEST && method != Method::POST {
        Attempt::Done(Err(StoreError::InvalidName(name.to_string())))
    } else {
        Attempt::Done(Err(StoreError::Io(format!("{method} {name}: {reason}"))))
    }
}

fn expired(headers: &HeaderMap) -> bool {
    headers
        .get(EXPIRES_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .is_some_and(|expiry| expiry <= SystemTime::now())
}

#[async_trait]
impl Store for HttpStore {
    async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let url = self.url_of(name)?;
        let what = format!("HEAD {url}");
        self.with_retries(&what, || async {
            let response = match self
                .client
                .head(&url)
                .timeout(self.options.probe_timeout)
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => return Attempt::Retry(scoot_core::error_chain(&e)),
            };
            match response.status() {
                StatusCode::OK => Attempt::Done(Ok(!expired(response.headers()))),
                StatusCode::NOT_FOUND => Attempt::Done(Ok(false)),
                _ => failure(Method::HEAD, name, response).await,
            }
        })
        .await
    }

    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let url = self.url_of(name)?;
        let what = format!("GET {url}");
        self.with_retries(&what, || async {
            let response = match self
                .client
                .get(&url)
                .timeout(self.options.transfer_timeout)
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => return Attempt::Retry(scoot_core::error_chain(&e)),
            };
            match response.status() {
                StatusCode::OK => match response.bytes().await {
                    Ok(body) => Attempt::Done(Ok(Some(body))),
                    Err(e) => {
                        Attempt::Retry(format!("reading the body: {}", scoot_core::error_chain(&e)))
                    }
                },
                StatusCode::NOT_FOUND => Attempt::Done(Ok(None)),
                _ => failure(Method::GET, name, response).await,
            }
        })
        .await
    }

    async fn write(&self, name: &str, data: Bytes, expiry: Expiry) -> Result<(), StoreError> {
        let url = self.url_of(name)?;
        let expiry = expiry.unwrap_or_else(|| SystemTime::now() + DEFAULT_TTL);
        let expires = format_http_date(expiry);
        let what = format!("POST {url}");
        self.with_retries(&what, || async {
            let response = match self
                .client
                .post(&url)
                .timeout(self.options.transfer_timeout)
                .header(CONTENT_TYPE, "text/plain")
                .header(CONTENT_LENGTH, data.len())
                .header(EXPIRES_HEADER, &expires)
                .body(data.clone())
                .send()
                .await
            {
                Ok(response) => response,
                Err(e) => return Attempt::Retry(scoot_core::error_chain(&e)),
            };
            if response.status().is_success() {
                Attempt::Done(Ok(()))
            } else {
                failure(Method::POST, name, response).await
            }
        })
        .await
    }
}

/// Normalizes a bundlestore location to a base URL ending in `/`:
///
/// * `http://host:port/some/path` is used as given (a missing trailing `/` is added);
/// * a bare `host:port` means `http://host:port/bundle/` (an apiserver's bundlestore);
/// * `host:port/some/path` means `http://host:port/some/path/`.
///
/// Only `http` is supported (no TLS); queries and fragments are refused.
pub fn normalize_base_url(base_url: &str) -> Result<String, StoreError> {
    let trimmed = base_url.trim();
    let invalid =
        |why: &str| StoreError::Io(format!("invalid bundlestore URL {base_url:?}: {why}"));
    if trimmed.is_empty() || trimmed.starts_with('/') {
        return Err(invalid("no host"));
    }
    let full = if trimmed.contains("://") {
        trimmed.to_string()
    } else if trimmed.contains('/') {
        format!("http://{trimmed}")
    } else {
        format!("http://{trimmed}/bundle/")
    };
    let url = reqwest::Url::parse(&full).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("only http:// and https:// are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    let mut normalized = url.to_string();
    if !normalized.ends_with('/') {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const SECONDS_PER_DAY: i64 = 24 * 60 * 60;

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1–12). Counts in 400-year eras
/// of 146 097 days, with years starting in March so that the leap day comes last.
fn days_from_date(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_date`]: (year, month 1–12, day 1–31).
fn date_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    days_from_date(year + i64::from(month == 12), month % 12 + 1, 1)
        - days_from_date(year, month, 1)
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let secs = before.duration().as_secs_f64().ceil();
            -(secs as i64)
        }
    }
}

/// Formats `time` (to the second, rounded down) as an RFC 1123 date in GMT, the form HTTP uses:
/// `Sun, 06 Nov 1994 08:49:37 GMT`. Go's `time.RFC1123` layout parses it.
pub fn format_http_date(time: SystemTime) -> String {
    let secs = unix_seconds(time);
    let days = secs.div_euclid(SECONDS_PER_DAY);
    let of_day = secs.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = date_from_days(days);
    let weekday = WEEKDAYS
        .get(usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0))
        .copied()
        .unwrap_or("Sun");
    let month = MONTHS
        .get(usize::try_from(month - 1).unwrap_or(0))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Parses an RFC 1123 date: `Mon, 02 Jan 2006 15:04:05 GMT`. Day and month names are
/// case-insensitive and the weekday is not checked against the date. The zone is `GMT`, `UTC`,
/// `UT` or `Z`, or a numeric offset such as `-0700` (Go's RFC1123Z); other zone abbreviations
/// are refused rather than guessed.
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [weekday, day, month, year, clock, zone] = fields.as_slice() else {
        return None;
    };
    let weekday = weekday.strip_suffix(',')?;
    if !WEEKDAYS.iter().any(|w| w.eq_ignore_ascii_case(weekday)) {
        return None;
    }
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))
        .and_then(|i| i64::try_from(i).ok())?
        + 1;
    let year = digits(year, 4, 4)?;
    let day = digits(day, 1, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut clock = clock.split(':');
    let (Some(hour), Some(minute), Some(second), None) =
        (clock.next(), clock.next(), clock.next(), clock.next())
    else {
        return None;
    };
    let (hour, minute, second) = (
        digits(hour, 2, 2)?,
        digits(minute, 2, 2)?,
        digits(second, 2, 2)?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let offset = zone_offset_seconds(zone)?;
    let secs =
        days_from_date(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset;
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// A number written with between `min` and `max` ASCII digits.
fn digits(text: &str, min: usize, max: usize) -> Option<i64> {
    if text.len() < min || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn zone_offset_seconds(zone: &str) -> Option<i64> {
    if ["GMT", "UTC", "UT", "Z"]
        .iter()
        .any(|z| z.eq_ignore_ascii_case(zone))
    {
        return Some(0);
    }
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, zone.get(1..)?),
        b'-' => (-1, zone.get(1..)?),
        _ => return None,
    };
    let value = digits(rest, 4, 4)?;
    let (hours, minutes) = (value / 100, value % 100);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::any;

    use super::*;

    #[test]
    fn base_urls_are_normalized() {
        let ok = |input: &str| normalize_base_url(input).unwrap();
        assert_eq!(
            ok("http://localhost:9094/bundle/"),
            "http://localhost:9094/bundle/"
        );
        assert_eq!(
            ok("http://localhost:9094/bundle"),
            "http://localhost:9094/bundle/"
        );
        assert_eq!(ok("localhost:9094"), "http://localhost:9094/bundle/");
        assert_eq!(ok("  10.0.0.1:80  "), "http://10.0.0.1/bundle/");
        assert_eq!(ok("localhost:9094/x"), "http://localhost:9094/x/");
        assert_eq!(ok("http://h:1"), "http://h:1/");
        assert_eq!(ok("https://h:1/bundle"), "https://h:1/bundle/");
        for bad in ["ftp://h/", "http://", "", "http://h/?q=1", "h:notaport"] {
            assert!(normalize_base_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(encode_path_segment("bs-abc.bundle"), "bs-abc.bundle");
        assert_eq!(encode_path_segment("a b?#%é"), "a%20b%3F%23%25%C3%A9");
    }

    #[test]
    fn http_dates_round_trip() {
        assert_eq!(
            format_http_date(UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(format_http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("sun, 06 nov 1994 08:49:37 utc"), Some(t));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 01:49:37 -0700"), Some(t));
        assert_eq!(parse_http_date("Sun, 6 Nov 1994 10:19:37 +0130"), Some(t));
        // Leap days and the far side of the epoch.
        let leap = parse_http_date("Thu, 29 Feb 2024 23:59:59 GMT").unwrap();
        assert_eq!(format_http_date(leap), "Thu, 29 Feb 2024 23:59:59 GMT");
        let old = parse_http_date("Fri, 31 Dec 1965 12:00:00 GMT").unwrap();
        assert_eq!(format_http_date(old), "Fri, 31 Dec 1965 12:00:00 GMT");
        // Every day over several centuries formats and parses back to itself.
        for days in (-200_000..200_000).step_by(997) {
            let t = UNIX_EPOCH + Duration::from_secs(0);
            let t = if days >= 0 {
                t + Duration::from_secs(days as u64 * 86_400 + 45_296)
            } else {
                t - Duration::from_secs((-days) as u64 * 86_400 - 45_296)
            };
            let text = format_http_date(t);
            assert_eq!(parse_http_date(&text), Some(t), "{text}");
        }
        // The weekday matches the date.
        assert!(
            format_http_date(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
                .starts_with("Tue, 14 Nov 2023")
        );
    }

    #[test]
    fn bad_http_dates_are_refused() {
        for bad in [
            "",
            "yesterday",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 2023 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Nov 1994 08:49:37 +07",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?} accepted");
        }
    }

    /// A bundlestore stand-in that records what it was sent and can be told to fail.
    #[derive(Default)]
    struct Fake {
        blobs: Mutex<HashMap<String, Bytes>>,
        requests: AtomicUsize,
        /// Answer this many requests with 500 before behaving.
        fail_first: AtomicUsize,
        /// Answer every request with this status instead.
        always: Mutex<Option<StatusCode>>,
        last_headers: Mutex<Option<HeaderMap>>,
    }

    async fn fake_handler(
        State(fake): State<Arc<Fake>>,
        Path(name): Path<String>,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        fake.requests.fetch_add(1, Ordering::SeqCst);
        if fake
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return (StatusCode::INTERNAL_SERVER_ERROR, "try later").into_response();
        }
        if let Some(status) = *fake.always.lock().unwrap() {
            return (status, "nope").into_response();
        }
        *fake.last_headers.lock().unwrap() = Some(headers);
        let mut blobs = fake.blobs.lock().unwrap();
        match method {
            Method::GET => match blobs.get(&name) {
                Some(data) => data.clone().into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            },
            Method::HEAD if blobs.contains_key(&name) => StatusCode::OK.into_response(),
            Method::HEAD => StatusCode::NOT_FOUND.into_response(),
            Method::POST => {
                blobs.entry(name).or_insert(body);
                StatusCode::OK.into_response()
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }

    async fn serve(fake: Arc<Fake>) -> String {
        let app = Router::new()
            .route("/bundle/{name}", any(fake_handler))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr.to_string()
    }

    fn quick() -> HttpStoreOptions {
        HttpStoreOptions {
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..HttpStoreOptions::default()
        }
    }

    #[tokio::test]
    async fn write_read_exists_against_a_server() {
        let fake = Arc::new(Fake::default());
        let addr = serve(fake.clone()).await;
        let store = HttpStore::new(&addr).unwrap();
        assert_eq!(store.base_url(), format!("http://{addr}/bundle/"));
        assert!(!store.exists("bs-a.bundle").await.unwrap());
        assert_eq!(store.read("bs-a.bundle").await.unwrap(), None);
        store
            .write("bs-a.bundle", Bytes::from_static(b"data"), None)
            .await
            .unwrap();
        let headers = fake.last_headers.lock().unwrap().clone().unwrap();
        assert_eq!(headers[CONTENT_TYPE.as_str()], "text/plain");
        assert_eq!(headers[CONTENT_LENGTH.as_str()], "4");
        let expires = parse_http_date(headers[EXPIRES_HEADER].to_str().unwrap()).unwrap();
        let from_now = expires.duration_since(SystemTime::now()).unwrap();
        assert!(from_now > DEFAULT_TTL - Duration::from_secs(60) && from_now <= DEFAULT_TTL);
        assert!(store.exists("bs-a.bundle").await.unwrap());
        assert_eq!(
            store.read("bs-a.bundle").await.unwrap().unwrap(),
            Bytes::from_static(b"data")
        );

        let expiry = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        store
            .write("bs-b.bundle", Bytes::from_static(b"x"), Some(expiry))
            .await
            .unwrap();
        let headers = fake.last_headers.lock().unwrap().clone().unwrap();
        assert_eq!(headers[EXPIRES_HEADER], "Wed, 18 May 2033 03:33:20 GMT");
        assert!(matches!(
            store.read("a/b").await,
            Err(StoreError::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn server_errors_are_retried() {
        let fake = Arc::new(Fake::default());
        fake.fail_first.store(2, Ordering::SeqCst);
        let addr = serve(fake.clone()).await;
        let store = HttpStore::with_options(&addr, quick()).unwrap();
        store
            .write("bs-a.bundle", Bytes::from_static(b"data"), None)
            .await
            .unwrap();
        assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
        fake.fail_first.store(2, Ordering::SeqCst);
        assert_eq!(
            store.read("bs-a.bundle").await.unwrap().unwrap(),
            Bytes::from_static(b"data")
        );
        assert_eq!(fake.requests.load(Ordering::SeqCst), 6);
        fake.fail_first.store(2, Ordering::SeqCst);
        assert!(store.exists("bs-a.bundle").await.unwrap());
        assert_eq!(fake.requests.load(Ordering::SeqCst), 9);
    }

    #[tokio::test]
    async fn retries_give_up_after_the_last_try() {
        let fake = Arc::new(Fake::default());
        *fake.always.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
        let addr = serve(fake.clone()).await;
        let store = HttpStore::with_options(&addr, quick()).unwrap();
        let err = store.read("bs-a.bundle").await.unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
        assert!(err.to_string().contains("7 tries"), "{err}");
        assert_eq!(fake.requests.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let fake = Arc::new(Fake::default());
        *fake.always.lock().unwrap() = Some(StatusCode::BAD_REQUEST);
        let addr = serve(fake.clone()).await;
        let store = HttpStore::with_options(&addr, quick()).unwrap();
        assert!(matches!(
            store.read("x").await,
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.exists("x").await,
            Err(StoreError::InvalidName(_))
        ));
        let err = store.write("x", Bytes::new(), None).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Io(m) if m.contains("400")),
            "{err}"
        );
        *fake.always.lock().unwrap() = Some(StatusCode::FORBIDDEN);
        assert!(store.read("x").await.is_err());
        assert_eq!(fake.requests.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connection_failures_are_retried_then_reported() {
        // A port that was free a moment ago: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let store = HttpStore::with_options(
            &format!("http://{addr}/bundle/"),
            HttpStoreOptions {
                tries: 3,
                ..quick()
            },
        )
        .unwrap();
        let err = store.exists("bs-a.bundle").await.unwrap_err();
        assert!(err.to_string().contains("3 tries"), "{err}");
    }

    #[tokio::test]
    async fn an_expired_head_answer_means_absent() {
        async fn head(headers_out: State<&'static str>) -> Response {
            ([(EXPIRES_HEADER, *headers_out)], "").into_response()
        }
        for (expires, exists) in [
            ("Thu, 01 Jan 1970 00:00:00 GMT", false),
            ("Fri, 01 Jan 9999 00:00:00 GMT", true),
            ("garbage", true),
        ] {
            let app = Router::new()
                .route("/bundle/{name}", any(head))
                .with_state(expires);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let store = HttpStore::new(&addr.to_string()).unwrap();
            assert_eq!(store.exists("b").await.unwrap(), exists, "{expires}");
        }
    }
}
