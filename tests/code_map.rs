//! Keeps ARCHITECTURE.md's crate graph true: the table between the `crate-graph` markers must
//! list every workspace crate with exactly the workspace crates it depends on (normal and build
//! dependencies; dev-dependencies are left out), as `cargo metadata` reports them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

type Graph = BTreeMap<String, BTreeSet<String>>;

const BEGIN: &str = "<!-- crate-graph:begin -->";
const END: &str = "<!-- crate-graph:end -->";

/// The root package (binaries, end-to-end tests, benchmarks).
const ROOT: &str = "scoot-rs";

/// Our library crates are `scoot-<name>`; the table names them by `<name>`, the root by its own.
fn short(package: &str) -> &str {
    if package == ROOT {
        return ROOT;
    }
    package.strip_prefix("scoot-").unwrap_or(package)
}

fn graph_from_metadata(root: &Path) -> Graph {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("a package list");
    let ours: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap_or_default();
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|dep| dep["kind"].as_str() != Some("dev"))
                .filter_map(|dep| dep["name"].as_str())
                .filter(|dep| ours.contains(dep))
                .map(|dep| short(dep).to_string())
                .collect();
            (short(name).to_string(), deps)
        })
        .collect()
}

/// Parses rows `| `name` | `dep`, `dep` |` (or `—` for none) between the markers.
fn graph_from_doc(doc: &str) -> Graph {
    let start = doc
        .find(BEGIN)
        .expect("ARCHITECTURE.md has the crate-graph:begin marker");
    let end = doc
        .find(END)
        .expect("ARCHITECTURE.md has the crate-graph:end marker");
    doc[start + BEGIN.len()..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let [name, deps] = cells.as_slice() else {
                return None;
            };
            let name = name.strip_prefix('`')?.strip_suffix('`')?;
            let deps = deps
                .split(',')
                .map(|d| d.trim().trim_matches('`'))
                .filter(|d| !d.is_empty() && *d != "—")
                .map(str::to_string)
                .collect();
            Some((name.to_string(), deps))
        })
        .collect()
}

#[test]
fn the_documented_crate_graph_is_the_real_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let documented = graph_from_doc(&doc);
    let real = graph_from_metadata(root);
    let mut differences = Vec::new();
    for name in documented
        .keys()
        .chain(real.keys())
        .collect::<BTreeSet<_>>()
    {
        match (documented.get(name), real.get(name)) {
            (Some(doc_deps), Some(real_deps)) if doc_deps != real_deps => differences.push(
                format!("`{name}`: documented {doc_deps:?}, cargo says {real_deps:?}"),
            ),
            (Some(_), None) => differences.push(format!("`{name}` is documented but is no crate")),
            (None, Some(real_deps)) => differences.push(format!(
                "`{name}` (deps {real_deps:?}) is missing from the table"
            )),
            _ => {}
        }
    }
    assert!(
        differences.is_empty(),
        "ARCHITECTURE.md's crate graph differs from cargo metadata:\n{}",
        differences.join("\n")
    );
}

#[test]
fn the_doc_table_parser_reads_rows_and_empty_dependency_lists() {
    let doc = format!(
        "intro\n{BEGIN}\n| crate | depends on |\n|---|---|\n| `core` | — |\n| `thrift` | `core` |\n\
         | `worker` | `core`, `thrift` |\n{END}\n| `outside` | `core` |\n"
    );
    let graph = graph_from_doc(&doc);
    assert_eq!(graph.len(), 3, "{graph:?}");
    assert!(graph["core"].is_empty());
    assert_eq!(
        graph["worker"],
        BTreeSet::from(["core".to_string(), "thrift".to_string()])
    );
}
