//! Platform properties: what an action asks of the machine it runs on, what a worker offers,
//! and whether the two match. The scheduler matches before it queues an action and when it
//! picks a worker; the worker checks again before it runs it, with the same functions.
//!
//! An action's platform is `Action.platform` when that names any property, else the legacy
//! `Command.platform`. Its properties fall in three groups:
//!
//! * **Facts** a worker must have, compared by value: `OSFamily` and `ISA` (case-insensitive,
//!   since clients differ: BuildStream sends `linux`, Bazel configurations often `Linux`) and
//!   any property an operator gives workers (`-platform pool=big`), compared exactly. A
//!   property no worker offers is unmatched, never ignored.
//! * **Behaviour** the worker implements: `sandbox` (`host-tools` or `rootfs`, see [`Mode`]),
//!   `network` (`on` or `off`, default off), `unixUID` and `unixGID` (decimal ids the action
//!   runs as inside its sandbox) and Scoot's `JDK_SYMLINK`. Malformed values are
//!   INVALID_ARGUMENT. All but `JDK_SYMLINK` need a sandboxed worker.
//! * The **mode**: `sandbox` when given; else `rootfs` when the action names `OSFamily` or
//!   `ISA` (buildbox-based clients such as BuildStream send both and treat the input root as
//!   the whole filesystem); else `host-tools` (Bazel's empty platform), which a worker that
//!   runs actions unsandboxed by the operator's choice (`sandbox=none`) also serves.
//!
//! A worker offers its facts and one `sandbox` property per mode it serves, so pools of
//! host-tools workers, rootfs workers and workers serving both can share a cluster.

use std::fmt;

use scoot_proto::reapi::v2;

use crate::Invalid;
use crate::rules::validate_relative_path;

pub const OS_FAMILY: &str = "OSFamily";
pub const ISA: &str = "ISA";
pub const SANDBOX: &str = "sandbox";
pub const NETWORK: &str = "network";
pub const UNIX_UID: &str = "unixUID";
pub const UNIX_GID: &str = "unixGID";
/// Scoot's property `JDK_SYMLINK=<path>`: the action wants a symlink at `<path>` in its input
/// root to the worker's `$JAVA_HOME` (a JDK the worker has, not shipped as inputs).
pub const JDK_SYMLINK: &str = "JDK_SYMLINK";
/// The `sandbox` value of a worker that runs actions on its host, unsandboxed.
pub const UNSANDBOXED: &str = "none";

/// How a sandboxed action sees the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The host's filesystem read-only, the action's exec root writable, a private `/tmp`.
    HostTools,
    /// The input root is the action's `/`.
    Rootfs,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::HostTools, Mode::Rootfs];

    pub fn name(self) -> &'static str {
        match self {
            Mode::HostTools => "host-tools",
            Mode::Rootfs => "rootfs",
        }
    }

    pub fn parse(value: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == value)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One property, as a worker offers it or an action asks for it.
pub use scoot_core::PlatformProperty as Property;

/// What an action asks for, parsed and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The `sandbox` property, if the action gave it.
    pub explicit_mode: Option<Mode>,
    /// Whether the action named `OSFamily` or `ISA` (which makes it a rootfs action).
    names_os: bool,
    /// `network=on`.
    pub network: bool,
    pub unix_uid: Option<u32>,
    pub unix_gid: Option<u32>,
    /// Where `JDK_SYMLINK` wants its link, a normalised relative path.
    pub jdk_symlink: Option<String>,
    /// The facts a worker must have.
    pub facts: Vec<Property>,
    /// The behaviour properties given, as named (for messages).
    behaviour: Vec<Property>,
}

impl Requirements {
    /// The mode the action runs in (see the module documentation).
    pub fn mode(&self) -> Mode {
        match self.explicit_mode {
            Some(mode) => mode,
            None if self.names_os => Mode::Rootfs,
            None => Mode::HostTools,
        }
    }

    /// Whether a worker running actions unsandboxed may run this one: only when it asks for
    /// nothing a sandbox provides.
    fn allows_unsandboxed(&self) -> bool {
        self.explicit_mode.is_none() && self.mode() == Mode::HostTools && self.behaviour.is_empty()
    }

    /// The first of these requirements `worker` does not meet, as the property to name in an
    /// error; `None` when it meets them all.
    pub fn first_unmet(&self, worker: &[Property]) -> Option<Property> {
        let offers = |name: &str, value: &str| {
            worker
                .iter()
                .any(|p| p.name == name && values_equal(name, &p.value, value))
        };
        let mode = self.mode();
        let mode_served = offers(SANDBOX, mode.name())
            || (self.allows_unsandboxed() && offers(SANDBOX, UNSANDBOXED));
        if !mode_served {
            // Name what made the action need this mode.
            let reason = match (self.explicit_mode, self.behaviour.first()) {
                (None, Some(behaviour)) if mode == Mode::HostTools => behaviour.clone(),
                _ => Property::new(SANDBOX, mode.name()),
            };
            return Some(reason);
        }
        self.facts
            .iter()
            .find(|fact| !offers(&fact.name, &fact.value))
            .cloned()
    }

    /// Why no worker of `workers` (their property lists) can run the action, naming what none
    /// of them offers; `None` when one can.
    pub fn unmatched(&self, workers: &[&[Property]]) -> Option<String> {
        let mut unmet: Vec<Property> = workers
            .iter()
            .map(|w| self.first_unmet(w))
            .collect::<Option<Vec<_>>>()?;
        unmet.sort();
        unmet.dedup();
        let offered: std::collections::BTreeSet<String> = workers
            .iter()
            .flat_map(|w| w.iter().map(Property::to_string))
            .collect();
        let offered = offered.into_iter().collect::<Vec<_>>().join(", ");
        let listed = unmet
            .iter()
            .map(Property::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Some(match unmet.len() {
            0 => format!(
                "no worker is there to run the action (it needs {})",
                Property::new(SANDBOX, self.mode().name())
            ),
            1 => format!(
                "no worker offers the platform property {listed} (workers offer: {offered})"
            ),
            _ => format!(
                "no worker offers every platform property the action asks for: each lacks one \
                 of {listed} (workers offer: {offered})"
            ),
        })
    }
}

fn values_equal(name: &str, offered: &str, asked: &str) -> bool {
    if name == OS_FAMILY || name == ISA {
        offered.eq_ignore_ascii_case(asked)
    } else {
        offered == asked
    }
}

/// The properties of an action: `Action.platform` when it names any, else `Command.platform`.
pub fn action_properties(action: &v2::Action, command: &v2::Command) -> Vec<Property> {
    let listed = |platform: &Option<v2::Platform>| {
        platform
            .iter()
            .flat_map(|p| &p.properties)
            .map(|p| Property::new(&p.name, &p.value))
            .collect::<Vec<_>>()
    };
    let from_action = listed(&action.platform);
    if from_action.is_empty() {
        listed(&command.platform)
    } else {
        from_action
    }
}

/// Parses and checks an action's properties.
pub fn parse(properties: &[Property]) -> Result<Requirements, Invalid> {
    let mut req = Requirements::default();
    let mut seen_behaviour = std::collections::BTreeSet::new();
    for property in properties {
        let name = property.name.as_str();
        let value = property.value.as_str();
        let behaviour = [SANDBOX, NETWORK, UNIX_UID, UNIX_GID, JDK_SYMLINK].contains(&name);
        if behaviour && !seen_behaviour.insert(name) {
            return Err(Invalid(format!(
                "platform property {name} is given more than once"
            )));
        }
        match name {
            SANDBOX => {
                req.explicit_mode = Some(Mode::parse(value).ok_or_else(|| {
                    Invalid(format!(
                        "platform property {SANDBOX}={value:?}: the modes are {}",
                        mode_names()
                    ))
                })?);
            }
            NETWORK => {
                req.network = match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(Invalid(format!(
                            "platform property {NETWORK}={value:?}: must be on or off"
                        )));
                    }
                };
                if req.network {
                    req.behaviour.push(property.clone());
                }
            }
            UNIX_UID | UNIX_GID => {
                let id = value.parse::<u32>().map_err(|_| {
                    Invalid(format!(
                        "platform property {name}={value:?} is not a numeric id"
                    ))
                })?;
                if name == UNIX_UID {
                    req.unix_uid = Some(id);
                } else {
                    req.unix_gid = Some(id);
                }
                req.behaviour.push(property.clone());
            }
            JDK_SYMLINK => {
                let path = validate_relative_path(value)
                    .map_err(|e| Invalid(format!("platform property {JDK_SYMLINK}: {}", e.0)))?;
                if path.is_empty() {
                    return Err(Invalid(format!(
                        "platform property {JDK_SYMLINK} names the input root itself"
                    )));
                }
                req.jdk_symlink = Some(path);
            }
            _ => {
                if name.is_empty() {
                    return Err(Invalid("a platform property has an empty name".into()));
                }
                if name == OS_FAMILY || name == ISA {
                    req.names_os = true;
                }
                req.facts.push(property.clone());
            }
        }
    }
    if req.mode() == Mode::Rootfs && req.jdk_symlink.is_some() {
        return Err(Invalid(format!(
            "platform property {JDK_SYMLINK} links to the worker's JDK, which a rootfs action \
             (whose input root is its whole filesystem) cannot see"
        )));
    }
    Ok(req)
}

fn mode_names() -> String {
    Mode::ALL.map(Mode::name).join(", ")
}

/// The facts of the machine this runs on: `OSFamily` and `ISA` as buildbox-based clients name
/// them (`linux`, `x86-64`, `aarch64`).
pub fn host_facts() -> Vec<Property> {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86-32",
        other => other,
    };
    vec![
        Property::new(OS_FAMILY, std::env::consts::OS),
        Property::new(ISA, isa),
    ]
}

/// Parses an operator's `name=value,name=value` list of extra worker properties; a property
/// whose name the worker implements is refused (a worker cannot claim behaviour by flag).
pub fn parse_worker_properties(list: &str) -> Result<Vec<Property>, Invalid> {
    let mut properties = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, value)) = item.split_once('=') else {
            return Err(Invalid(format!(
                "platform property {item:?}: expected name=value"
            )));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(Invalid(format!(
                "platform property {item:?} has an empty name"
            )));
        }
        if [SANDBOX, NETWORK, UNIX_UID, UNIX_GID, JDK_SYMLINK].contains(&name) {
            return Err(Invalid(format!(
                "platform property {name} is behaviour the worker implements, not a fact to \
                 claim; choose sandbox modes with -sandbox"
            )));
        }
        properties.push(Property::new(name, value));
    }
    Ok(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(list: &[(&str, &str)]) -> Vec<Property> {
        list.iter().map(|(n, v)| Property::new(*n, *v)).collect()
    }

    fn worker(modes: &[&str]) -> Vec<Property> {
        let mut w = props(&[(OS_FAMILY, "linux"), (ISA, "x86-64")]);
        w.extend(modes.iter().map(|m| Property::new(SANDBOX, *m)));
        w
    }

    fn req(list: &[(&str, &str)]) -> Requirements {
        parse(&props(list)).unwrap()
    }

    #[test]
    fn the_mode_is_given_or_follows_from_the_os_properties() {
        assert_eq!(req(&[]).mode(), Mode::HostTools);
        assert_eq!(req(&[(OS_FAMILY, "linux")]).mode(), Mode::Rootfs);
        assert_eq!(req(&[(ISA, "x86-64")]).mode(), Mode::Rootfs);
        let explicit = req(&[(OS_FAMILY, "Linux"), (SANDBOX, "host-tools")]);
        assert_eq!(explicit.mode(), Mode::HostTools);
    }

    #[test]
    fn workers_serve_the_modes_they_offer() {
        let both = worker(&["host-tools", "rootfs"]);
        let host_tools = worker(&["host-tools"]);
        let rootfs = worker(&["rootfs"]);
        let plain = worker(&[UNSANDBOXED]);
        let bazel = req(&[]);
        let buildstream = req(&[(OS_FAMILY, "linux"), (ISA, "x86-64"), (UNIX_UID, "0")]);
        assert_eq!(bazel.first_unmet(&both), None);
        assert_eq!(bazel.first_unmet(&host_tools), None);
        assert_eq!(bazel.first_unmet(&plain), None);
        assert_eq!(
            bazel.first_unmet(&rootfs),
            Some(Property::new(SANDBOX, "host-tools"))
        );
        assert_eq!(buildstream.first_unmet(&both), None);
        assert_eq!(buildstream.first_unmet(&rootfs), None);
        assert_eq!(
            buildstream.first_unmet(&plain),
            Some(Property::new(SANDBOX, "rootfs"))
        );
        // A plain worker cannot keep an action off the network or give it a uid.
        assert_eq!(
            req(&[(NETWORK, "on")]).first_unmet(&plain),
            Some(Property::new(NETWORK, "on"))
        );
        assert_eq!(
            req(&[(UNIX_UID, "1000")]).first_unmet(&plain),
            Some(Property::new(UNIX_UID, "1000"))
        );
        assert_eq!(
            req(&[(SANDBOX, "host-tools")]).first_unmet(&plain),
            Some(Property::new(SANDBOX, "host-tools"))
        );
    }

    #[test]
    fn facts_match_by_value_os_and_isa_ignoring_case() {
        let w = worker(&["host-tools", "rootfs"]);
        assert_eq!(
            req(&[(OS_FAMILY, "Linux"), (ISA, "X86-64")]).first_unmet(&w),
            None
        );
        assert_eq!(
            req(&[(ISA, "aarch64")]).first_unmet(&w),
            Some(Property::new(ISA, "aarch64"))
        );
        assert_eq!(
            req(&[("pool", "big")]).first_unmet(&w),
            Some(Property::new("pool", "big"))
        );
        let mut big = w.clone();
        big.push(Property::new("pool", "big"));
        assert_eq!(req(&[("pool", "big")]).first_unmet(&big), None);
        assert_eq!(
            req(&[("pool", "BIG")]).first_unmet(&big),
            Some(Property::new("pool", "BIG"))
        );
    }

    #[test]
    fn unmatched_names_the_property_no_worker_offers() {
        let a = worker(&["host-tools"]);
        let b = worker(&["rootfs"]);
        let workers = [a.as_slice(), b.as_slice()];
        let message = req(&[(ISA, "sparc")]).unmatched(&workers).unwrap();
        assert!(message.contains("ISA=sparc"), "{message}");
        assert!(message.contains("sandbox=rootfs"), "{message}");
        assert_eq!(req(&[]).unmatched(&workers), None);
        assert_eq!(req(&[(OS_FAMILY, "linux")]).unmatched(&workers), None);
        let none = req(&[]).unmatched(&[]).unwrap();
        assert!(none.contains("sandbox=host-tools"), "{none}");
    }

    #[test]
    fn malformed_values_are_invalid() {
        for bad in [
            (UNIX_UID, "root"),
            (UNIX_UID, "-1"),
            (UNIX_GID, "1.5"),
            (NETWORK, "maybe"),
            (SANDBOX, "docker"),
            (JDK_SYMLINK, "/abs"),
            (JDK_SYMLINK, ".."),
            ("", "x"),
        ] {
            let err = parse(&props(&[bad])).unwrap_err();
            assert!(err.0.contains(bad.0), "{bad:?}: {err}");
        }
        let twice = parse(&props(&[(UNIX_UID, "1"), (UNIX_UID, "2")])).unwrap_err();
        assert!(twice.0.contains("more than once"), "{twice}");
        let jdk = parse(&props(&[(OS_FAMILY, "linux"), (JDK_SYMLINK, "jdk")])).unwrap_err();
        assert!(jdk.0.contains("rootfs"), "{jdk}");
    }

    #[test]
    fn the_action_platform_wins_over_the_command_platform() {
        let platform = |name: &str| {
            Some(v2::Platform {
                properties: vec![v2::platform::Property {
                    name: name.into(),
                    value: "v".into(),
                }],
            })
        };
        let command = v2::Command {
            platform: platform("from-command"),
            ..Default::default()
        };
        let mut action = v2::Action::default();
        assert_eq!(
            action_properties(&action, &command),
            props(&[("from-command", "v")])
        );
        action.platform = platform("from-action");
        assert_eq!(
            action_properties(&action, &command),
            props(&[("from-action", "v")])
        );
    }

    #[test]
    fn operators_add_facts_but_not_behaviour() {
        assert_eq!(
            parse_worker_properties(" pool=big , rack=3").unwrap(),
            props(&[("pool", "big"), ("rack", "3")])
        );
        assert!(parse_worker_properties("sandbox=rootfs").is_err());
        assert!(parse_worker_properties("nameonly").is_err());
        assert!(parse_worker_properties("=v").is_err());
        assert_eq!(parse_worker_properties("").unwrap(), vec![]);
    }
}
