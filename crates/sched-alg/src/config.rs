//! Class configuration: load percents, the requestor → class map and the rebalancing knobs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use regex::Regex;

/// The tunable parameters of the load-based algorithm.
///
/// The fields are public so a caller can build one freely; [`crate::LoadBasedAlg::new`] validates
/// it (and normalises the percents), and the copy held by the algorithm is always valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassConfig {
    /// Class name → share of the workers (percent). Normalised to add up to 100 when stored.
    pub load_percents: BTreeMap<String, i32>,
    /// Requestor regular expression → class name. Keys are tried in sorted order; the first key
    /// whose expression matches anywhere in the requestor wins.
    pub requestor_to_class: BTreeMap<String, String>,
    /// How long the percent spread must stay above the threshold before tasks are stopped.
    pub rebalance_min_duration: Duration,
    /// Spread (in percentage points) above which rebalancing is considered.
    pub rebalance_threshold: i32,
}

/// Default percent per class.
pub const DEFAULT_LOAD_PERCENTS: [(&str, i32); 8] = [
    ("land", 40),
    ("diff", 25),
    ("sandbox", 10),
    ("regression", 17),
    ("ktf", 3),
    ("coverage", 2),
    ("tryout", 2),
    ("unknown", 1),
];

/// Default requestor expression → class.
pub const DEFAULT_REQUESTOR_TO_CLASS: [(&str, &str); 9] = [
    ("land.*", "land"),
    ("diff.*", "diff"),
    ("sandbox.*", "sandbox"),
    ("regression.*", "regression"),
    ("CI.*", "regression"),
    ("jenkins.*", "ktf"),
    ("ktf.*", "ktf"),
    ("coverage.*", "coverage"),
    ("tryout.*", "tryout"),
];

/// Default minimum time the spread must be exceeded before rebalancing.
pub const DEFAULT_REBALANCE_MIN_DURATION: Duration = Duration::from_secs(4 * 60);

/// Default rebalance threshold; 0 means rebalancing is off.
pub const DEFAULT_REBALANCE_THRESHOLD: i32 = 0;

impl Default for ClassConfig {
    fn default() -> Self {
        ClassConfig {
            load_percents: DEFAULT_LOAD_PERCENTS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            requestor_to_class: DEFAULT_REQUESTOR_TO_CLASS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            rebalance_min_duration: DEFAULT_REBALANCE_MIN_DURATION,
            rebalance_threshold: DEFAULT_REBALANCE_THRESHOLD,
        }
    }
}

impl ClassConfig {
    /// True when both rebalancing knobs are positive.
    pub fn rebalancing_enabled(&self) -> bool {
        !self.rebalance_min_duration.is_zero() && self.rebalance_threshold > 0
    }
}

/// Why a configuration change was refused. The previous configuration stays in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The load percent map had no classes.
    EmptyLoadPercents,
    /// A class was given a negative percent.
    NegativePercent { class: String, percent: i32 },
    /// Every class had 0 %, so nothing could ever be scheduled (and there is nothing to scale).
    ZeroPercentTotal,
    /// A requestor key is not a valid regular expression.
    InvalidRequestorRegex { pattern: String, reason: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyLoadPercents => {
                write!(f, "load percents must name at least one class")
            }
            ConfigError::NegativePercent { class, percent } => {
                write!(f, "class {class:?} has a negative load percent ({percent})")
            }
            ConfigError::ZeroPercentTotal => {
                write!(
                    f,
                    "load percents add up to 0; at least one class needs a positive share"
                )
            }
            ConfigError::InvalidRequestorRegex { pattern, reason } => {
                write!(
                    f,
                    "requestor pattern {pattern:?} is not a valid regular expression: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Orders class names by descending percent, ties by ascending name.
pub(crate) fn order_by_desc_percent(percents: &BTreeMap<String, i32>) -> Vec<String> {
    let mut names: Vec<&String> = percents.keys().collect();
    // BTreeMap keys are already name-sorted, and the sort is stable, so ties keep name order.
    names.sort_by_key(|name| std::cmp::Reverse(percents[*name]));
    names.into_iter().cloned().collect()
}

/// Validates a percent map and scales it to add up to 100 when it does not already.
///
/// Every class except the first in descending-percent order gets `floor(p * 100 / sum)`; the first
/// one takes whatever is left so the result adds up to exactly 100.
pub(crate) fn normalise_percents(
    percents: &BTreeMap<String, i32>,
) -> Result<BTreeMap<String, i32>, ConfigError> {
    if percents.is_empty() {
        return Err(ConfigError::EmptyLoadPercents);
    }
    if let Some((class, percent)) = percents.iter().find(|(_, p)| **p < 0) {
        return Err(ConfigError::NegativePercent {
            class: class.clone(),
            percent: *percent,
        });
    }
    let sum: i64 = percents.values().map(|p| i64::from(*p)).sum();
    if sum == 0 {
        return Err(ConfigError::ZeroPercentTotal);
    }
    if sum == 100 {
        return Ok(percents.clone());
    }
    let order = order_by_desc_percent(percents);
    let mut out = BTreeMap::new();
    let mut others: i64 = 0;
    for name in order.iter().skip(1) {
        let scaled = i64::from(percents[name]) * 100 / sum;
        others += scaled;
        out.insert(name.clone(), to_i32(scaled));
    }
    out.insert(order[0].clone(), to_i32(100 - others));
    Ok(out)
}

/// Scaled percents are always within 0..=100, so this never saturates in practice.
fn to_i32(v: i64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Compiled requestor patterns, in the order they are tried.
#[derive(Debug, Clone)]
pub(crate) struct RequestorMatcher {
    rules: Vec<(Regex, String)>,
}

impl RequestorMatcher {
    pub(crate) fn compile(map: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(map.len());
        for (pattern, class) in map {
            let re = Regex::new(pattern).map_err(|e| ConfigError::InvalidRequestorRegex {
                pattern: pattern.clone(),
                reason: e.to_string(),
            })?;
            rules.push((re, class.clone()));
        }
        Ok(RequestorMatcher { rules })
    }

    /// The class named by the first (in key order) pattern found anywhere in `requestor`.
    pub(crate) fn class_for(&self, requestor: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(re, _)| re.is_match(requestor))
            .map(|(_, class)| class.as_str())
    }
}
