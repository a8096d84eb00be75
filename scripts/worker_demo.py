"""Runs one command on a workerserver and shows its result (see worker-demo.sh)."""

import sys
import time
import urllib.request

gen_dir, host, port, http_addr = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, gen_dir)
from thrift.protocol import TBinaryProtocol  # noqa: E402
from thrift.transport import TSocket, TTransport  # noqa: E402
from worker import Worker  # noqa: E402
from worker.ttypes import RunCommand, Status  # noqa: E402


def deadline_loop(what, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        yield
        time.sleep(0.05)
    sys.exit("timed out waiting for " + what)


for _ in deadline_loop("the worker to listen"):
    try:
        transport = TTransport.TBufferedTransport(TSocket.TSocket(host, port))
        transport.open()
        break
    except Exception:
        pass
client = Worker.Client(TBinaryProtocol.TBinaryProtocol(transport))

accepted = client.Run(RunCommand(argv=["sh", "-c", "echo hello from scoot-rs; uname -sm"]))
print("Run ->", Status._VALUES_TO_NAMES[accepted.status], "runId", accepted.runId)
for _ in deadline_loop("the run to finish"):
    runs = [r for r in client.QueryWorker().runs if r.runId == accepted.runId]
    if runs and runs[0].status in (Status.COMPLETE, Status.FAILED, Status.ABORTED, Status.TIMEDOUT):
        done = runs[0]
        break
print("final:", Status._VALUES_TO_NAMES[done.status], "exit", done.exitCode)
print("stdout URI:", done.outUri)
with urllib.request.urlopen("http://%s/output/%s-stdout?content=true" % (http_addr, done.runId)) as r:
    body = r.read().decode()
print("output:\n" + body.split("SCOOT_CMD_LOG\n", 1)[1], end="")
with urllib.request.urlopen("http://%s/health" % http_addr) as r:
    print("health:", r.read().decode())
if done.status != Status.COMPLETE or done.exitCode != 0:
    sys.exit("the run did not complete successfully")
