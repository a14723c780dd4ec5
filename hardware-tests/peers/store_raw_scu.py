#!/usr/bin/env python3
"""A modality sending Part 10 files as they are on disk, played by pynetdicom.

pynetdicom's chunked mode sends the data set bytes after the file meta
without decoding them, so a malformed file reaches the peer as it is, the
way a faulty console would send it. Prints one JSON line per file: its name
and the C-STORE status (null when the peer gave no answer).
"""
import argparse
import json

import pydicom
from pynetdicom import AE, _config

_config.STORE_SEND_CHUNKED_DATASET = True

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--called", required=True)
p.add_argument("--calling", required=True)
p.add_argument("--max-send-pdu", type=int, default=0,
               help="send P-DATA PDUs of at most this size (0: as the peer allows)")
p.add_argument("files", nargs="+")
a = p.parse_args()

ae = AE(ae_title=a.calling)
for f in a.files:
    meta = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[]).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
assoc = ae.associate(a.host, a.port, ae_title=a.called)
if not assoc.is_established:
    raise SystemExit("association refused")
if a.max_send_pdu:
    # pynetdicom fragments by the peer's maximum PDU, read through this
    # property; capping it plays a console whose own send limit is below
    # what the peer offers.
    offered = assoc.dimse.maximum_pdu_size
    cap = min(a.max_send_pdu, offered) if offered else a.max_send_pdu
    type(assoc.dimse).maximum_pdu_size = property(lambda _self: cap)
for f in a.files:
    rsp = assoc.send_c_store(f)
    status = int(rsp.Status) if "Status" in rsp else None
    comment = str(rsp.ErrorComment) if "ErrorComment" in rsp else None
    print(json.dumps({"file": f, "status": status, "comment": comment}), flush=True)
assoc.release()
