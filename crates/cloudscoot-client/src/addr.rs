//! `~/.cloudscootaddr$SCOOT_ID`, written by setup-cloud-scoot: the scheduler's address on the
//! first line, an apiserver's on the second.

use std::path::PathBuf;

pub fn cloudscootaddr_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let id = std::env::var("SCOOT_ID").unwrap_or_default();
    Some(PathBuf::from(home).join(format!(".cloudscootaddr{id}")))
}

/// Line `index` (0 = scheduler, 1 = apiserver) of the address file, if present.
pub fn from_cloudscootaddr(index: usize) -> Option<String> {
    let text = std::fs::read_to_string(cloudscootaddr_path()?).ok()?;
    text.lines()
        .nth(index)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// The scheduler address: the flag, else the address file, else Scoot's default.
pub fn scheduler_addr(flag: Option<String>) -> String {
    flag.or_else(|| from_cloudscootaddr(0))
        .unwrap_or_else(|| "localhost:9090".to_string())
}
