#!/usr/bin/env python3
"""DICOM callers from a chosen source address, played by pynetdicom.

hold: opens COUNT associations and keeps them open, silent, for SECONDS
      (a stuck console or a scanner on the LAN); prints how many opened.
echo: opens an association per C-ECHO, COUNT times, and prints one JSON
      line per attempt: the status, or null when refused or unanswered.
find: a Modality Worklist C-FIND whose PatientName is NAME_BYTES long;
      prints the statuses of the responses (null when none came).
"""
import argparse
import json
import time

from pydicom.dataset import Dataset
from pynetdicom import AE

VERIFICATION = "1.2.840.10008.1.1"
MWL_FIND = "1.2.840.10008.5.1.4.31"

p = argparse.ArgumentParser()
p.add_argument("mode", choices=["hold", "echo", "find"])
p.add_argument("--name-bytes", type=int, default=16)
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--called", required=True)
p.add_argument("--calling", required=True)
p.add_argument("--bind", default="")
p.add_argument("--count", type=int, default=1)
p.add_argument("--seconds", type=float, default=0)
a = p.parse_args()

ae = AE(ae_title=a.calling)
ae.add_requested_context(VERIFICATION)
ae.add_requested_context(MWL_FIND)
ae.acse_timeout = 10
ae.network_timeout = 10
bind = (a.bind, 0) if a.bind else ("", 0)

if a.mode == "hold":
    held = []
    for _ in range(a.count):
        assoc = ae.associate(a.host, a.port, ae_title=a.called, bind_address=bind)
        if assoc.is_established:
            held.append(assoc)
    print(json.dumps({"held": len(held)}), flush=True)
    time.sleep(a.seconds)
    for assoc in held:
        if assoc.is_established:
            assoc.abort()
elif a.mode == "find":
    assoc = ae.associate(a.host, a.port, ae_title=a.called, bind_address=bind)
    statuses = []
    if assoc.is_established:
        q = Dataset()
        q.PatientName = "A" * a.name_bytes
        q.PatientID = ""
        for status, _identifier in assoc.send_c_find(q, MWL_FIND):
            statuses.append(int(status.Status) if status and "Status" in status else None)
        assoc.release()
    print(json.dumps({"statuses": statuses}), flush=True)
else:
    for _ in range(a.count):
        assoc = ae.associate(a.host, a.port, ae_title=a.called, bind_address=bind)
        status = None
        if assoc.is_established:
            rsp = assoc.send_c_echo()
            status = int(rsp.Status) if rsp and "Status" in rsp else None
            assoc.release()
        print(json.dumps({"status": status}), flush=True)
