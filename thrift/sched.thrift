# The scheduler's own serialisation of accepted jobs, stored (TBinaryProtocol, strict) as the
# payload of a saga's StartSaga record. Field ids match Twitter Scoot's so that its saga data
# stays readable. Regenerate the Rust bindings with `make thrift`.

# scoot-rs: a platform property of a REAPI action (as worker.thrift's PlatformProperty).
struct PlatformProperty {
  1: required string name
  2: required string value
}

struct Command {
  1: required list<string> argv
  2: optional map<string, string> envVars
  # Nanoseconds.
  3: optional i64 timeout
  4: required string snapshotId
  # scoot-rs: the encoded REAPI ExecuteRequest of a job made by the Execution service.
  21: optional binary reapiRequest
  # scoot-rs: the action's platform properties as the client sent them (Action.platform, else
  # Command.platform), so a recovered job is matched to workers as before. Absent means none, as
  # for every CloudScoot task.
  22: optional list<PlatformProperty> platform
}

struct TaskDefinition {
  1: required Command command
  2: optional string taskId
}

struct JobDefinition {
  1: optional string jobType
  2: optional list<TaskDefinition> tasks
  3: optional i32 priority
  4: optional string tag
  5: optional string basis
  6: optional string requestor
}

struct Job {
  1: required string id
  2: required JobDefinition jobDefinition
}
