# Worker: the API a scheduler uses to drive one workerserver.
#
# Wire-compatible with the HEAD form of Twitter Scoot's worker API, in which WorkerStatus carries
# isHealthy as field 3 and error as field 4. Served as TBinaryProtocol over raw, unframed TCP.
# Regenerate the Rust bindings with `make thrift`.

enum Status {
  UNKNOWN = 0
  PENDING = 1
  RUNNING = 2
  COMPLETE = 3
  FAILED = 4
  ABORTED = 5
  TIMEDOUT = 6
}

# Run ids count up from "0" in each worker process.
struct RunStatus {
  1: required Status status
  2: required string runId
  3: optional string outUri
  4: optional string errUri
  5: optional string error
  6: optional i32 exitCode
  7: optional string snapshotId
  8: optional string jobId
  9: optional string taskId
  10: optional string tag
  # scoot-rs: for a REAPI action, the encoded build.bazel.remote.execution.v2.ExecuteResponse the
  # worker produced. Field 11 is skipped because Scoot's Bazel-era workers used it for a struct.
  21: optional binary reapiResponse
}

# scoot-rs: a platform property (REAPI's Platform.Property): a fact of the worker's machine such as
# OSFamily=linux, one the operator gave it, or a sandbox mode it serves (sandbox=rootfs).
struct PlatformProperty {
  1: required string name
  2: required string value
}

struct WorkerStatus {
  # The runs the worker still remembers (a single-slot worker keeps only its latest).
  1: required list<RunStatus> runs
  # False until the worker's snapshot stores are ready.
  2: required bool initialized
  # False once the worker has decided it can no longer run tasks reliably.
  3: required bool isHealthy
  # Why the worker is uninitialised or unhealthy; empty otherwise.
  4: required string error
  # scoot-rs extension (Scoot's schedulers ignore it): the platform properties the worker offers,
  # which the scheduler matches against what each task asks for (a REAPI action's platform;
  # nothing for CloudScoot tasks). A worker that reports none (any Scoot worker) is taken to offer
  # sandbox=none and nothing else: it runs actions unsandboxed on its host, so it gets CloudScoot
  # tasks and Bazel host-tools actions as before.
  21: optional list<PlatformProperty> platform
}

struct RunCommand {
  1: required list<string> argv
  2: optional map<string, string> env
  3: optional string snapshotId
  # 0 or absent means no timeout. Snapshot checkout time counts towards it.
  4: optional i32 timeoutMs
  5: optional string jobId
  6: optional string taskId
  7: optional string tag
  # scoot-rs: set when the command is a REAPI action: the encoded ExecuteRequest. The worker runs
  # the action's own Command in its input root and ignores argv and env.
  21: optional binary reapiRequest
}

service Worker {
  WorkerStatus QueryWorker()
  # Accepts the command (PENDING) or refuses it with a FAILED status that says why.
  RunStatus Run(1: RunCommand cmd)
  # Blocks until the run has ended and returns its final status.
  RunStatus Abort(1: string runId)
  # scoot-rs extension (Scoot's workers lack it; callers fall back to polling QueryWorker on an
  # unknown-method error): waits up to timeoutMs (at most 30 s) for the run to reach a state in
  # stateMask (bit 1 << state) and returns its status then, or its current status on timeout.
  # An unknown runId returns UNKNOWN at once.
  RunStatus WaitRun(1: string runId, 2: i64 stateMask, 3: i32 timeoutMs)
}
