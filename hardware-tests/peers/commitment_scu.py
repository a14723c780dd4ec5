#!/usr/bin/env python3
"""A modality asking for storage commitment, played by pynetdicom.

Starts listening for the N-EVENT-REPORT first, sends the N-ACTION for the
given instances on its own association, releases it (as consoles do), then
waits for the result. Writes one JSON line per event to --out.
"""
import argparse
import json
import sys
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--called", required=True)
p.add_argument("--calling", required=True)
p.add_argument("--listen", type=int, required=True)
p.add_argument("--transaction", required=True)
p.add_argument("--timeout", type=float, default=120)
p.add_argument("--out", required=True)
p.add_argument("instances", nargs="+", help="SOPCLASS:SOPINSTANCE")
a = p.parse_args()

done = threading.Event()


def write(obj):
    obj["time"] = time.time()
    with open(a.out, "a") as f:
        f.write(json.dumps(obj) + "\n")


def on_report(event):
    info = event.event_information
    ok = [i.ReferencedSOPInstanceUID for i in getattr(info, "ReferencedSOPSequence", [])]
    failed = [[i.ReferencedSOPInstanceUID, int(i.FailureReason)] for i in getattr(info, "FailedSOPSequence", [])]
    write({
        "event": "report",
        "event_type": int(event.event_type),
        "transaction": str(info.TransactionUID),
        "ok": ok,
        "failed": failed,
        "calling": event.assoc.requestor.ae_title,
    })
    done.set()
    return 0x0000, None


listener = AE(ae_title=a.calling)
listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
server = listener.start_server(("127.0.0.1", a.listen), block=False,
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])

ae = AE(ae_title=a.calling)
ae.add_requested_context(StorageCommitmentPushModel)
assoc = ae.associate(a.host, a.port, ae_title=a.called)
if not assoc.is_established:
    write({"event": "n-action", "error": "association refused"})
    server.shutdown()
    sys.exit(1)
ds = Dataset()
ds.TransactionUID = a.transaction
refs = []
for spec in a.instances:
    cls, inst = spec.split(":", 1)
    r = Dataset()
    r.ReferencedSOPClassUID = cls
    r.ReferencedSOPInstanceUID = inst
    refs.append(r)
ds.ReferencedSOPSequence = refs
status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
assoc.release()
write({"event": "n-action", "status": int(status.Status) if status else None})

done.wait(a.timeout)
server.shutdown()
sys.exit(0 if done.is_set() else 2)
