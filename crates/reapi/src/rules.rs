//! What an action must satisfy before it runs, as pure functions (no I/O, no clock), applied by
//! [`check_inputs`](crate::inputs::check_inputs) on the scheduler before it queues an action and
//! on the worker before it runs one.
//!
//! * Names in a `Directory` (files, directories, symlinks) are single path segments: not empty,
//!   not `.` or `..`, without `/` or NUL. Entries need not be sorted and may repeat if the
//!   repeats are identical; two different entries with one name are refused.
//! * Paths in a `Command` (`working_directory`, outputs) are relative, `/`-separated and are
//!   resolved lexically: empty and `.` segments are dropped, `..` goes up, and going above the
//!   input root is refused. The empty path is the working directory itself, allowed for output
//!   directories and `output_paths` (REAPI's "capture the whole working directory"), refused for
//!   output files.
//! * Strings handed to the operating system (arguments, environment, symlink targets) contain
//!   no NUL, which exec and symlink cannot express.

use std::collections::HashMap;

use scoot_core::Digest;
use scoot_proto::reapi::v2;

use crate::Invalid;
use crate::digest::from_proto;

/// A name in a `Directory`: one path segment.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Invalid(format!(
            "invalid name {name:?}: a name is one path segment, not empty, \".\" or \"..\", \
             without '/' or NUL"
        )));
    }
    Ok(())
}

/// A relative path resolved lexically from the input root: its normal form (segments joined by
/// `/`, `""` for the root itself).
pub fn validate_relative_path(path: &str) -> Result<String, Invalid> {
    resolve("", path)
}

/// Resolves `path` against `base` (a normal form), refusing absolute paths, NUL and paths that
/// leave the input root.
fn resolve(base: &str, path: &str) -> Result<String, Invalid> {
    if path.starts_with('/') {
        return Err(Invalid(format!(
            "invalid path {path:?}: must be relative to the input root"
        )));
    }
    if path.contains('\0') {
        return Err(Invalid(format!("invalid path {path:?}: contains NUL")));
    }
    let mut segments: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(Invalid(format!(
                        "invalid path {path:?}: leaves the input root"
                    )));
                }
            }
            name => segments.push(name),
        }
    }
    Ok(segments.join("/"))
}

/// How an output was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// `Command.output_files` (REAPI 2.0).
    File,
    /// `Command.output_directories` (REAPI 2.0).
    Directory,
    /// `Command.output_paths` (REAPI 2.1+): a file, directory or symlink, whichever appears.
    Path,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredOutput {
    /// As the Command gives it, relative to the working directory; results use this form.
    pub path: String,
    /// Normal form relative to the input root.
    pub resolved: String,
    pub kind: OutputKind,
}

/// Where a Command runs and what it leaves behind, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLayout {
    /// Normal form relative to the input root.
    pub working_directory: String,
    /// `output_paths` when the Command has any, otherwise `output_files` then
    /// `output_directories` (REAPI: the legacy fields are ignored when `output_paths` is set).
    pub outputs: Vec<DeclaredOutput>,
    /// `output_directories`, resolved, whichever form the outputs take: Bazel 6.3+ sends them
    /// next to `output_paths`, and they are created before the run either way (as Bazel does
    /// for tree artifacts locally), so an action behaves the same for every Bazel version.
    pub tree_directories: Vec<String>,
}

/// An output path relative to the working directory `working_directory` (a normal form),
/// resolved from the input root.
pub fn output_path(
    working_directory: &str,
    path: &str,
    kind: OutputKind,
) -> Result<String, Invalid> {
    let resolved =
        resolve(working_directory, path).map_err(|e| Invalid(format!("output {}", e.0)))?;
    if kind == OutputKind::File && resolved == working_directory {
        return Err(Invalid(format!(
            "invalid output file {path:?}: names the working directory itself"
        )));
    }
    Ok(resolved)
}

/// Checks a Command: arguments present, arguments and environment expressible to exec, and
/// every path inside the input root.
pub fn validate_command(command: &v2::Command) -> Result<CommandLayout, Invalid> {
    match command.arguments.first() {
        None => return Err(Invalid("the Command has no arguments".into())),
        Some(program) if program.is_empty() => {
            return Err(Invalid("the Command's first argument is empty".into()));
        }
        Some(_) => {}
    }
    if let Some(arg) = command.arguments.iter().find(|a| a.contains('\0')) {
        return Err(Invalid(format!("argument {arg:?} contains NUL")));
    }
    for var in &command.environment_variables {
        if var.name.is_empty() || var.name.contains(['=', '\0']) || var.value.contains('\0') {
            return Err(Invalid(format!(
                "invalid environment variable {:?}={:?}: the name must be non-empty and \
                 without '=', and neither may contain NUL",
                var.name, var.value
            )));
        }
    }
    let working_directory = resolve("", &command.working_directory)
        .map_err(|e| Invalid(format!("working_directory: {e}")))?;
    let declared: Vec<(&String, OutputKind)> = if command.output_paths.is_empty() {
        let files = command.output_files.iter().map(|p| (p, OutputKind::File));
        let dirs = command
            .output_directories
            .iter()
            .map(|p| (p, OutputKind::Directory));
        files.chain(dirs).collect()
    } else {
        command
            .output_paths
            .iter()
            .map(|p| (p, OutputKind::Path))
            .collect()
    };
    let outputs = declared
        .into_iter()
        .map(|(path, kind)| {
            Ok(DeclaredOutput {
                path: path.clone(),
                resolved: output_path(&working_directory, path, kind)?,
                kind,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let tree_directories = command
        .output_directories
        .iter()
        .map(|path| output_path(&working_directory, path, OutputKind::Directory))
        .collect::<Result<_, Invalid>>()?;
    Ok(CommandLayout {
        working_directory,
        outputs,
        tree_directories,
    })
}

/// The blobs one Directory refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryRefs {
    pub files: Vec<Digest>,
    pub directories: Vec<Digest>,
}

/// Checks one Directory's entries, for the Directory `depth` levels below the input root (the
/// root is 0), and returns the digests they name. Symlinks must stay inside the input root:
/// absolute targets are refused (the server advertises them as disallowed) and so are relative
/// ones that climb above the root.
pub fn validate_directory(
    directory: &v2::Directory,
    depth: usize,
) -> Result<DirectoryRefs, Invalid> {
    let mut entries = HashMap::new();
    let mut refs = DirectoryRefs::default();
    for file in &directory.files {
        let digest = from_proto(file.digest.as_ref(), &format!("file {:?}", file.name))?;
        refs.files.push(digest.clone());
        add_entry(
            &mut entries,
            &file.name,
            Entry::File(digest, file.is_executable),
        )?;
    }
    for dir in &directory.directories {
        let digest = from_proto(dir.digest.as_ref(), &format!("directory {:?}", dir.name))?;
        refs.directories.push(digest.clone());
        add_entry(&mut entries, &dir.name, Entry::Directory(digest))?;
    }
    for link in &directory.symlinks {
        if link.target.is_empty() || link.target.contains('\0') {
            return Err(Invalid(format!(
                "symlink {:?} has an empty target or one containing NUL",
                link.name
            )));
        }
        if link.target.starts_with('/') {
            return Err(Invalid(format!(
                "symlink {:?} has the absolute target {:?}; absolute symlinks are not allowed",
                link.name, link.target
            )));
        }
        if climbs_out(depth, &link.target) {
            return Err(Invalid(format!(
                "symlink {:?} points at {:?}, outside the input root",
                link.name, link.target
            )));
        }
        add_entry(&mut entries, &link.name, Entry::Symlink(&link.target))?;
    }
    Ok(refs)
}

/// Whether a relative symlink target, read from a directory `depth` levels below the root,
/// leads above the root (lexically, as the target is not followed).
pub fn climbs_out(depth: usize, target: &str) -> bool {
    let mut level = depth;
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." if level == 0 => return true,
            ".." => level -= 1,
            _ => level += 1,
        }
    }
    false
}

/// One entry of a Directory, to tell a harmless repeat from a conflict.
#[derive(PartialEq)]
enum Entry<'a> {
    File(Digest, bool),
    Directory(Digest),
    Symlink(&'a str),
}

fn add_entry<'a>(
    entries: &mut HashMap<&'a str, Entry<'a>>,
    name: &'a str,
    entry: Entry<'a>,
) -> Result<(), Invalid> {
    validate_name(name)?;
    match entries.get(name) {
        Some(existing) if *existing != entry => {
            Err(Invalid(format!("two different entries are named {name:?}")))
        }
        _ => {
            entries.insert(name, entry);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::to_proto;
    use crate::inputs::tests::digest_of;

    fn file(name: &str, content: &[u8]) -> v2::FileNode {
        v2::FileNode {
            name: name.into(),
            digest: Some(to_proto(&digest_of(content))),
            ..Default::default()
        }
    }

    fn dir_node(name: &str, digest: &Digest) -> v2::DirectoryNode {
        v2::DirectoryNode {
            name: name.into(),
            digest: Some(to_proto(digest)),
        }
    }

    #[test]
    fn names_are_single_segments() {
        for good in ["a", "a.b", "...", ".hidden", "with space", "ü"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_resolve_inside_the_root() {
        assert_eq!(validate_relative_path("").unwrap(), "");
        assert_eq!(validate_relative_path("a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(validate_relative_path("a/../b").unwrap(), "b");
        for bad in ["/abs", "..", "a/../..", "a/\0"] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            output_path("sub", "../out/x", OutputKind::File).unwrap(),
            "out/x"
        );
        assert!(output_path("sub", "../../x", OutputKind::File).is_err());
        assert!(output_path("sub", "/etc/passwd", OutputKind::Path).is_err());
        assert_eq!(
            output_path("sub", "", OutputKind::Directory).unwrap(),
            "sub"
        );
        assert_eq!(output_path("sub", "", OutputKind::Path).unwrap(), "sub");
        for bad_file in ["", ".", "x/.."] {
            assert!(
                output_path("sub", bad_file, OutputKind::File).is_err(),
                "{bad_file:?}"
            );
        }
    }

    #[test]
    fn commands_are_checked_and_laid_out() {
        let command = v2::Command {
            arguments: vec!["cc".into()],
            working_directory: "pkg".into(),
            output_files: vec!["a.o".into()],
            output_directories: vec!["gen".into()],
            ..Default::default()
        };
        let layout = validate_command(&command).unwrap();
        assert_eq!(layout.working_directory, "pkg");
        let outputs: Vec<(&str, &str, OutputKind)> = layout
            .outputs
            .iter()
            .map(|o| (o.path.as_str(), o.resolved.as_str(), o.kind))
            .collect();
        assert_eq!(
            outputs,
            vec![
                ("a.o", "pkg/a.o", OutputKind::File),
                ("gen", "pkg/gen", OutputKind::Directory)
            ]
        );
        // output_paths replaces the legacy fields.
        let modern = v2::Command {
            output_paths: vec!["x".into()],
            ..command.clone()
        };
        let layout = validate_command(&modern).unwrap();
        assert_eq!(layout.outputs.len(), 1);
        assert_eq!(layout.outputs[0].kind, OutputKind::Path);
        // ...but the legacy output directories are still created before the run.
        assert_eq!(layout.tree_directories, vec!["pkg/gen".to_string()]);

        let bad = |f: fn(&mut v2::Command)| {
            let mut c = command.clone();
            f(&mut c);
            validate_command(&c).unwrap_err()
        };
        bad(|c| c.arguments.clear());
        bad(|c| c.working_directory = "/abs".into());
        bad(|c| c.working_directory = "..".into());
        bad(|c| c.output_files = vec!["../../escape".into()]);
        bad(|c| c.output_directories = vec!["/abs".into()]);
        bad(|c| c.output_paths = vec!["ok".into(), "../../x".into()]);
        bad(|c| c.arguments.push("a\0b".into()));
        bad(|c| {
            c.environment_variables
                .push(v2::command::EnvironmentVariable {
                    name: "A=B".into(),
                    value: String::new(),
                })
        });
    }

    #[test]
    fn directories_refuse_bad_names_and_conflicts_but_tolerate_repeats() {
        for bad in ["", ".", "..", "a/b"] {
            let d = v2::Directory {
                files: vec![file(bad, b"x")],
                ..Default::default()
            };
            assert!(validate_directory(&d, 0).is_err(), "{bad:?}");
            let d = v2::Directory {
                directories: vec![dir_node(bad, &Digest::empty())],
                ..Default::default()
            };
            assert!(validate_directory(&d, 0).is_err(), "{bad:?}");
            let d = v2::Directory {
                symlinks: vec![v2::SymlinkNode {
                    name: bad.into(),
                    target: "t".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert!(validate_directory(&d, 0).is_err(), "{bad:?}");
        }
        // Unsorted and repeated identically: fine.
        let ok = v2::Directory {
            files: vec![file("b", b"1"), file("a", b"2"), file("b", b"1")],
            ..Default::default()
        };
        assert_eq!(validate_directory(&ok, 0).unwrap().files.len(), 3);
        // One name, two different things.
        let conflict = v2::Directory {
            files: vec![file("a", b"1")],
            directories: vec![dir_node("a", &Digest::empty())],
            ..Default::default()
        };
        assert!(validate_directory(&conflict, 0).is_err());
        let missing_digest = v2::Directory {
            files: vec![v2::FileNode {
                name: "f".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate_directory(&missing_digest, 0).is_err());
        let empty_target = v2::Directory {
            symlinks: vec![v2::SymlinkNode {
                name: "l".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate_directory(&empty_target, 0).is_err());
        let link = |target: &str| v2::Directory {
            symlinks: vec![v2::SymlinkNode {
                name: "l".into(),
                target: target.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate_directory(&link("/etc/passwd"), 3).is_err());
        assert!(validate_directory(&link("../x"), 0).is_err());
        assert!(validate_directory(&link("a/../../x"), 0).is_err());
        assert!(validate_directory(&link("../x"), 1).is_ok());
        assert!(validate_directory(&link("../../sub/x"), 2).is_ok());
        assert!(validate_directory(&link("../../../x"), 2).is_err());
    }
}
