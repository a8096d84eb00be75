//! A Bazel workspace written from a [`Shape`]: a chain of genrules (a deep graph), genrules
//! fanning out from one source and back into one (a wide graph), C++ libraries and binaries
//! whose headers include each other a little, and one genrule writing a big output with one
//! more reading it.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::support::repo_root;

/// How big each part of the workspace is.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Genrules in one chain, each reading the previous one's output.
    pub chain: usize,
    /// Genrules reading one source genrule's output, all read by one last genrule.
    pub fan: usize,
    /// `cc_library` targets, each depending on the one before it.
    pub libraries: usize,
    /// `.cc` files (each with its header) per library.
    pub files_per_library: usize,
    /// `cc_binary` targets, one `main.cc` each, each on one library.
    pub binaries: usize,
    /// The size of the one big output.
    pub big_bytes: u64,
}

/// Bazel 2.1 runs a compile per `.cc` file, and per library an archive and a shared library;
/// a binary is a compile and a link. Measured on the generated workspace: 100 C++ files in 10
/// libraries and 10 binaries are 130 actions.
const CC_ACTIONS_PER_TEN_FILES: usize = 13;

impl Shape {
    /// A workspace of about `actions` actions: a tenth of them C++ files, the rest of the
    /// genrules a third in the chain and two thirds in the fan, plus the big output and its
    /// reader.
    pub fn of_about(actions: usize, big_bytes: u64) -> Shape {
        let files = (actions / 10).max(3);
        let libraries = (files / 10).max(1);
        let binaries = libraries;
        let files_per_library = ((files - binaries) / libraries).max(1);
        let cc_files = libraries * files_per_library + binaries;
        let genrules = actions.saturating_sub(cc_files * CC_ACTIONS_PER_TEN_FILES / 10 + 2);
        let chain = (genrules / 3).max(2);
        // The fan's source and its fan-in are two of its actions.
        let fan = genrules.saturating_sub(chain + 2).max(2);
        Shape {
            chain,
            fan,
            libraries,
            files_per_library,
            binaries,
            big_bytes,
        }
    }

    pub fn cc_files(&self) -> usize {
        self.libraries * self.files_per_library + self.binaries
    }

    /// Writes the workspace's files (WORKSPACE and every package) into `dir`.
    pub fn write(&self, dir: &Path) {
        // The sample workspace's WORKSPACE points Bazel at the offline stand-ins beside it.
        fs::copy(
            repo_root().join("tests/bazel/workspace/WORKSPACE"),
            dir.join("WORKSPACE"),
        )
        .unwrap();
        self.write_chain(dir);
        self.write_fan(dir);
        self.write_cc(dir);
        self.write_big(dir);
    }

    fn write_chain(&self, dir: &Path) {
        let mut build = String::from(
            "genrule(\n    name = \"c0\",\n    srcs = [\"seed.txt\"],\n    outs = [\"c0.txt\"],\n    \
             cmd = \"cat $< > $@\",\n)\n",
        );
        for i in 1..self.chain {
            writeln!(
                build,
                "genrule(\n    name = \"c{i}\",\n    srcs = [\":c{prev}\"],\n    outs = [\"c{i}.txt\"],\n    \
                 cmd = \"cat $< > $@ && echo {i} >> $@\",\n)",
                prev = i - 1
            )
            .unwrap();
        }
        write(dir, "chain/seed.txt", "seed\n");
        write(dir, "chain/BUILD", &build);
    }

    fn write_fan(&self, dir: &Path) {
        let mut build = String::from(
            "genrule(\n    name = \"source\",\n    outs = [\"source.txt\"],\n    \
             cmd = \"seq 1 1000 > $@\",\n)\n",
        );
        for i in 0..self.fan {
            writeln!(
                build,
                "genrule(\n    name = \"f{i}\",\n    srcs = [\":source\"],\n    outs = [\"f{i}.txt\"],\n    \
                 cmd = \"sed s/^/{i}-/ $< | sha256sum > $@\",\n)"
            )
            .unwrap();
        }
        let all: Vec<String> = (0..self.fan).map(|i| format!("\":f{i}\"")).collect();
        writeln!(
            build,
            "genrule(\n    name = \"all\",\n    srcs = [{}],\n    outs = [\"all.txt\"],\n    \
             cmd = \"cat $(SRCS) > $@\",\n)",
            all.join(", ")
        )
        .unwrap();
        write(dir, "fan/BUILD", &build);
    }

    /// Library `l`'s file `f` calls file `f` of library `l - 1` through its header, so a header
    /// change reaches the libraries above it, as in a real code base.
    fn write_cc(&self, dir: &Path) {
        for l in 0..self.libraries {
            let mut names = Vec::new();
            for f in 0..self.files_per_library {
                write(
                    dir,
                    &format!("cc/lib{l}/f{f}.h"),
                    &format!("#pragma once\n#include <string>\nstd::string lib{l}_f{f}(int n);\n"),
                );
                let (include, call) = match l.checked_sub(1) {
                    Some(below) => (
                        format!("#include \"cc/lib{below}/f{f}.h\"\n"),
                        format!("lib{below}_f{f}(n - 1)"),
                    ),
                    None => (String::new(), "std::string()".to_string()),
                };
                write(
                    dir,
                    &format!("cc/lib{l}/f{f}.cc"),
                    &format!(
                        "#include \"cc/lib{l}/f{f}.h\"\n{include}#include <vector>\n\n\
                         std::string lib{l}_f{f}(int n) {{\n  \
                         std::vector<std::string> parts{{\"lib{l}\", \"f{f}\"}};\n  \
                         std::string out = n > 0 ? {call} : std::string();\n  \
                         for (const auto& p : parts) out += p;\n  return out;\n}}\n"
                    ),
                );
                names.push(format!("f{f}"));
            }
            let list = |ext: &str| {
                names
                    .iter()
                    .map(|n| format!("\"{n}.{ext}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let deps = match l.checked_sub(1) {
                Some(below) => format!("    deps = [\"//cc/lib{below}\"],\n"),
                None => String::new(),
            };
            write(
                dir,
                &format!("cc/lib{l}/BUILD"),
                &format!(
                    "package(default_visibility = [\"//visibility:public\"])\n\n\
                     cc_library(\n    name = \"lib{l}\",\n    srcs = [{}],\n    hdrs = [{}],\n{deps})\n",
                    list("cc"),
                    list("h")
                ),
            );
        }
        for b in 0..self.binaries {
            let l = self.libraries - 1 - b % self.libraries;
            write(
                dir,
                &format!("cc/bin{b}/main.cc"),
                &format!(
                    "#include <iostream>\n#include \"cc/lib{l}/f0.h\"\n\n\
                     int main() {{\n  std::cout << lib{l}_f0({l}) << std::endl;\n  return 0;\n}}\n"
                ),
            );
            write(
                dir,
                &format!("cc/bin{b}/BUILD"),
                &format!(
                    "cc_binary(\n    name = \"bin{b}\",\n    srcs = [\"main.cc\"],\n    \
                     deps = [\"//cc/lib{l}\"],\n)\n"
                ),
            );
        }
    }

    /// Random bytes: nothing in the path (CAS, transfers) can shortcut them, and the action is
    /// cached by its command, not its output.
    fn write_big(&self, dir: &Path) {
        write(
            dir,
            "big/BUILD",
            &format!(
                "genrule(\n    name = \"big\",\n    outs = [\"big.bin\"],\n    \
                 cmd = \"head -c {} /dev/urandom > $@\",\n)\n\n\
                 genrule(\n    name = \"digest\",\n    srcs = [\":big\"],\n    outs = [\"big.sha256\"],\n    \
                 cmd = \"sha256sum < $< > $@\",\n)\n",
                self.big_bytes
            ),
        );
    }
}

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
}
