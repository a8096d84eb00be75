# CloudScoot: the client-facing API of the scheduler.
#
# Wire-compatible with Twitter Scoot's scheduler API (field ids, types and requiredness are the
# contract). Served as TBinaryProtocol over raw, unframed TCP on the scheduler's thrift port.
# Regenerate the Rust bindings with `make thrift`.

exception InvalidRequest {
  1: optional string message
}

exception CanNotScheduleNow {
  1: optional i64 retryAfterMs
}

# The server could not complete the request (HTTP 500 in spirit).
exception ScootServerError {
  1: optional i64 retryAfterMs
}

enum JobType {
  UNKNOWN=1
  IRON_TESTS=2
}

# Lifecycle of one run on a worker. UNKNOWN is also treated as a final state.
enum RunStatusState {
  UNKNOWN = 0
  PENDING = 1
  RUNNING = 2
  COMPLETE = 3   # the command ran to an exit code, whatever that code was
  FAILED = 4     # the run mechanism failed (checkout, exec, worker trouble)
  ABORTED = 5    # killed on request or preempted
  TIMEDOUT = 6   # killed after exceeding its timeout
}

# Run ids are per worker and unrelated to job or task ids.
struct RunStatus {
  1: required RunStatusState status
  2: required string runId
  3: optional string outUri
  4: optional string errUri
  5: optional string error
  6: optional i32 exitCode
  7: optional string snapshotId
  8: optional string jobId
  9: optional string taskId
  10: optional string tag
}

struct Command {
  1: list<string> argv
  2: optional map<string, string> envVars
}

struct TaskDefinition {
  1: required Command command
  2: optional string snapshotId
  # Unique within a job.
  3: optional string taskId
  4: optional i32 timeoutMs
}

struct JobDefinition {
  1: required list<TaskDefinition> tasks,
  2: optional JobType DEPRECATED_jobType,
  3: optional i32 defaultTaskTimeoutMs,
  # 0 (lowest) to 2.
  4: optional i32 priority
  # Groups related jobs; the job id when not given.
  5: optional string tag
  # A newer job with the same requestor and basis replaces older ones.
  6: optional string basis
  # Used for per-requestor limits and scheduling classes.
  7: optional string requestor
  # Informational: used for stats only.
  8: optional string jobType
}

struct JobId {
  1: required string id
}

enum Status {
  NOT_STARTED=1
  IN_PROGRESS=2
  COMPLETED=3
  ROLLING_BACK=4
  ROLLED_BACK=5
}

struct JobStatus {
  1: required string id
  2: required Status status
  3: optional map<string, Status> taskStatus
  4: optional map<string, RunStatus> taskData
}

struct OfflineWorkerReq {
  1: required string id
  2: required string requestor
}

struct ReinstateWorkerReq {
  1: required string id
  2: required string requestor
}

struct SchedulerStatus {
  1: required i32 currentTasks
  2: required i32 maxTasks
}

service CloudScoot {
  JobId RunJob(1: JobDefinition job) throws (
    1: InvalidRequest ir
    2: CanNotScheduleNow cnsn
  )
  JobStatus GetStatus(1: string jobId) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  JobStatus KillJob(1: string jobId) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  void OfflineWorker(1: OfflineWorkerReq req) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  void ReinstateWorker(1: ReinstateWorkerReq req) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  SchedulerStatus GetSchedulerStatus() throws (
    1: ScootServerError err
  )
  # -1 means unlimited, 0 means accept nothing, N > 0 is a limit clients are asked to honour.
  void SetSchedulerStatus(1: i32 maxTasks) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  map<string, i32> GetClassLoadPercents() throws (
    1: InvalidRequest ir
  )
  void SetClassLoadPercents (1: map<string, i32> loadPercents) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  # Keys are regular expressions over requestor names; values are class names.
  map<string, string> GetRequestorToClassMap() throws (
    1: InvalidRequest ir
  )
  void SetRequestorToClassMap (1: map<string, string> requestorToClassMap) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  # Minutes.
  i32 GetRebalanceMinimumDuration() throws (
    1: InvalidRequest ir
  )
  void SetRebalanceMinimumDuration(1: i32 durationMin) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
  # Percentage points.
  i32 GetRebalanceThreshold() throws (
    1: InvalidRequest ir
  )
  void SetRebalanceThreshold(1: i32 threshold) throws (
    1: InvalidRequest ir
    2: ScootServerError err
  )
}
