//! The Capabilities service: what this server supports, the same for every instance name.

use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::capabilities_server::Capabilities;
use scoot_proto::semver::SemVer;
use tonic::{Request, Response, Status};

use crate::CasConfig;
use crate::digest::DIGEST_FUNCTION;

fn version(major: i32, minor: i32) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

/// What GetCapabilities answers for `config`: API versions deprecated 2.0 / low 2.0 / high 2.3
/// (Bazel 2.x refuses a server whose low version is above 2.0), SHA-256 only, action-cache
/// updates allowed, batch requests up to `max_batch_total_size_bytes`, absolute symlink targets
/// disallowed (input trees with them are refused, actions that make them fail), no compressors; execution
/// capabilities only when `exec_enabled`, with every priority accepted (the scheduler maps them
/// onto Scoot's three).
pub fn server_capabilities(config: &CasConfig) -> v2::ServerCapabilities {
    let sha256 = DIGEST_FUNCTION as i32;
    v2::ServerCapabilities {
        cache_capabilities: Some(v2::CacheCapabilities {
            digest_functions: vec![sha256],
            action_cache_update_capabilities: Some(v2::ActionCacheUpdateCapabilities {
                update_enabled: true,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: i64::try_from(config.max_batch_total_size_bytes)
                .unwrap_or(i64::MAX),
            symlink_absolute_path_strategy: v2::symlink_absolute_path_strategy::Value::Disallowed
                as i32,
            supported_compressors: Vec::new(),
            supported_batch_update_compressors: Vec::new(),
        }),
        execution_capabilities: config.exec_enabled.then(|| v2::ExecutionCapabilities {
            digest_function: sha256,
            exec_enabled: true,
            execution_priority_capabilities: Some(v2::PriorityCapabilities {
                priorities: vec![v2::priority_capabilities::PriorityRange {
                    min_priority: i32::MIN,
                    max_priority: i32::MAX,
                }],
            }),
            supported_node_properties: Vec::new(),
            digest_functions: vec![sha256],
        }),
        deprecated_api_version: Some(version(2, 0)),
        low_api_version: Some(version(2, 0)),
        high_api_version: Some(version(2, 3)),
    }
}

/// Answers GetCapabilities with a fixed [`v2::ServerCapabilities`].
#[derive(Clone, Debug)]
pub struct CapabilitiesService {
    capabilities: v2::ServerCapabilities,
}

impl CapabilitiesService {
    pub fn new(capabilities: v2::ServerCapabilities) -> CapabilitiesService {
        CapabilitiesService { capabilities }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        _request: Request<v2::GetCapabilitiesRequest>,
    ) -> Result<Response<v2::ServerCapabilities>, Status> {
        Ok(Response::new(self.capabilities.clone()))
    }
}
